//! `sedge bench`: an ad-hoc load run and a small experiment against a real
//! node, producing the report files.

use crate::support::{example, Node};

#[test]
fn bench_load_reports_a_summary() {
    let node = Node::start();
    node.deploy(&example("echo-exec"));
    let url = format!("{}/function/echo-exec", node.url);
    let out = node.cli(&["bench", "load", &url, "-c", "2", "-n", "40", "--data", "ping", "--expect", "ping"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("40"), "the summary counts the requests: {text}");
    assert!(text.contains("100.0"), "every answer succeeded: {text}");
}

#[test]
fn bench_run_writes_the_report() {
    let node = Node::start();
    let tmp = tempfile::tempdir().expect("tempdir");
    let experiment = tmp.path().join("tiny.toml");
    let hello = example("hello-python");
    std::fs::write(
        &experiment,
        format!(
            "name = \"tiny\"\n[load]\nusers = [1, 2]\nrepetitions = 1\nwarmup = \"100ms\"\nduration = \"300ms\"\n\
             cold_starts = 1\n[[target]]\nname = \"sedge\"\nkind = \"sedge\"\n[[function]]\nname = \"hello-python\"\n\
             dir = {:?}\npayload = '{{\"name\": \"edge\"}}'\nexpect = \"Hello, edge!\"\n\
             labels = {{ workload = \"hello\", language = \"python\", style = \"sedge\" }}\n",
            hello.to_str().expect("path")
        ),
    )
    .expect("write experiment");
    let out_dir = tmp.path().join("out");
    let out = node.cli(&[
        "bench",
        "run",
        experiment.to_str().expect("path"),
        "--gateway",
        &node.url,
        "--out",
        out_dir.to_str().expect("path"),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for file in ["summary.json", "summary.md", "report.html", "raw.csv"] {
        let len = std::fs::metadata(out_dir.join(file)).map(|m| m.len()).unwrap_or(0);
        assert!(len > 0, "{file} is missing or empty");
    }
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out_dir.join("summary.json")).expect("summary")).expect("json");
    assert!(summary.to_string().contains("hello-python"), "{summary}");
    // One cold start per function: the chart shows it and the report says it is one sample.
    assert!(out_dir.join("charts/cold-starts.svg").is_file());
    let md = std::fs::read_to_string(out_dir.join("summary.md")).expect("summary.md");
    assert!(md.contains("one cold start per scenario"), "{md}");
    // And where it went, as the node reported it.
    let phases = std::fs::read_to_string(out_dir.join("charts/cold-start-phases.svg")).expect("the phases chart");
    assert!(phases.contains("imports") && phases.contains("first answer"), "the phases are named");
    assert!(md.contains("phases p50"), "{md}");
    let cdf = std::fs::read_to_string(out_dir.join("charts/cdf-sedge-hello-python.svg")).expect("the CDF chart");
    assert!(cdf.contains("1 user") && !cdf.contains("1 users"), "the legend says 1 user");

    let bad = tmp.path().join("bad.toml");
    std::fs::write(&bad, "name = \"bad\"\n[load]\nusers = [0]\n").expect("write");
    let out = node.cli(&["bench", "run", bad.to_str().expect("path"), "--gateway", &node.url]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("users"), "the error names the field: {err}");
}
