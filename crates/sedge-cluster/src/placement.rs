//! Which nodes run a function: those carrying all its `[placement]
//! labels` that can run its runtime, at most `replicas` of them. The choice
//! among them is rendezvous hashing on (function, node), so every node
//! computes the same set from the same membership, and a node joining or
//! leaving moves only the replicas it takes or had.

use sedge_core::Placement;
use sha2::{Digest, Sha256};

/// What placement needs to know of a node.
#[derive(Debug, Clone)]
pub struct Candidate<'a> {
    pub name: &'a str,
    pub labels: &'a [String],
    pub runtimes: &'a [String],
}

/// The nodes (by name, in rank order) that run `function`.
pub fn choose(function: &str, runtime: &str, placement: &Placement, nodes: &[Candidate<'_>]) -> Vec<String> {
    let mut eligible: Vec<(u64, &str)> = nodes
        .iter()
        .filter(|n| n.runtimes.iter().any(|r| r == runtime))
        .filter(|n| placement.labels.iter().all(|l| n.labels.contains(l)))
        .map(|n| (score(function, n.name), n.name))
        .collect();
    eligible.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
    let take = placement.replicas.map_or(eligible.len(), |r| r as usize);
    eligible.into_iter().take(take).map(|(_, n)| n.to_owned()).collect()
}

fn score(function: &str, node: &str) -> u64 {
    let mut h = Sha256::new();
    h.update(function.as_bytes());
    h.update([0]);
    h.update(node.as_bytes());
    let d = h.finalize();
    u64::from_be_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| (*x).to_owned()).collect()
    }

    #[test]
    fn labels_and_runtimes_filter_and_replicas_cap() {
        let all = s(&["python", "node", "exec", "http", "onnx"]);
        let no_onnx = s(&["python", "exec", "http"]);
        let (gpu, cam, none) = (s(&["gpu"]), s(&["camera", "arm64"]), s(&[]));
        let nodes = [
            Candidate { name: "a", labels: &gpu, runtimes: &all },
            Candidate { name: "b", labels: &cam, runtimes: &no_onnx },
            Candidate { name: "c", labels: &none, runtimes: &all },
        ];
        let any = Placement::default();
        let mut everywhere = choose("f", "python", &any, &nodes);
        everywhere.sort();
        assert_eq!(everywhere, s(&["a", "b", "c"]));
        assert_eq!(choose("f", "python", &Placement { labels: s(&["gpu"]), replicas: None }, &nodes), s(&["a"]));
        assert!(choose("f", "python", &Placement { labels: s(&["tpu"]), replicas: None }, &nodes).is_empty());
        let mut models = choose("m", "onnx", &any, &nodes);
        models.sort();
        assert_eq!(models, s(&["a", "c"]), "the node without ONNX Runtime is not chosen");
        assert_eq!(choose("f", "python", &Placement { labels: vec![], replicas: Some(2) }, &nodes).len(), 2);
    }

    #[test]
    fn the_choice_is_the_same_from_any_order_and_moves_little() {
        let r = s(&["python"]);
        let names: Vec<String> = (0..10).map(|i| format!("n{i}")).collect();
        let nodes: Vec<Candidate<'_>> =
            names.iter().map(|n| Candidate { name: n, labels: &[], runtimes: &r }).collect();
        let two = Placement { labels: vec![], replicas: Some(2) };
        let chosen = choose("effnet", "python", &two, &nodes);
        let mut reversed = nodes.clone();
        reversed.reverse();
        assert_eq!(choose("effnet", "python", &two, &reversed), chosen);
        // A node that is not chosen leaving changes nothing.
        let fewer: Vec<Candidate<'_>> =
            nodes.iter().filter(|n| !chosen.iter().any(|c| c == n.name)).take(1).cloned().collect();
        let without: Vec<Candidate<'_>> = nodes.iter().filter(|n| n.name != fewer[0].name).cloned().collect();
        assert_eq!(choose("effnet", "python", &two, &without), chosen);
        // Functions spread: not every function lands on the same two nodes.
        let firsts: std::collections::BTreeSet<String> =
            (0..20).map(|i| choose(&format!("f{i}"), "python", &two, &nodes)[0].clone()).collect();
        assert!(firsts.len() > 3, "{firsts:?}");
    }
}
