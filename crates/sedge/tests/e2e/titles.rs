//! Workers carry their function's name as their process title, so `ps`,
//! top and pgrep tell them apart (a spare starts as `sedge_worker --spare`).

use std::time::Duration;

use crate::support::{manifest, FnDir, Node};

/// Every process below `pid`, found through the parent field of
/// /proc/PID/stat (the children lists need a kernel option).
fn descendants(pid: u32) -> Vec<u32> {
    let parents: Vec<(u32, u32)> = std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|p| {
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).ok()?;
            // The name field may hold spaces and parentheses; what follows the last `)` does not.
            let rest = &stat[stat.rfind(')')? + 1..];
            Some((p, rest.split_whitespace().nth(1)?.parse().ok()?))
        })
        .collect();
    let mut found = vec![pid];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(parents.iter().filter(|(_, pp)| *pp == parent).map(|(p, _)| *p));
        i += 1;
    }
    found.remove(0);
    found
}

fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default().trim().to_owned()
}

/// The node's worker processes whose short name is `name`.
fn workers_named(node: &Node, name: &str) -> Vec<u32> {
    descendants(node.pid()).into_iter().filter(|p| comm(*p) == name).collect()
}

#[test]
fn a_worker_is_named_after_its_function() {
    let node = Node::start();
    let py = FnDir::python("titled-python", "", "def handle(req):\n    return 'py'\n");
    let js = FnDir::new(
        &manifest("titled-node", "node", "handler.handle", ""),
        &[("handler.js", "exports.handle = async () => 'js';\n")],
    );
    for (dir, name) in [(py.path(), "titled-python"), (js.path(), "titled-node")] {
        node.deploy(dir);
        assert_eq!(node.post(&format!("/function/{name}"), b"").status, 200);
        node.wait_for("the worker to take its name", Duration::from_secs(10), |n| !workers_named(n, name).is_empty());
        let pid = workers_named(&node, name)[0];
        let cmdline =
            String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/cmdline")).expect("cmdline")).into_owned();
        let title = format!("sedge-fn {name}");
        if name.ends_with("node") {
            assert!(cmdline.starts_with(&title), "{name}: {cmdline:?}");
        } else {
            // Python rewrites its command line only where setproctitle is installed.
            assert!(cmdline.starts_with(&title) || cmdline.contains("sedge_worker.py"), "{name}: {cmdline:?}");
        }
    }
}
