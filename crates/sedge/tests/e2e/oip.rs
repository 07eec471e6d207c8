//! The Open Inference Protocol (KServe v2) on model functions, spoken by
//! its reference client: the real `tritonclient[http]` from PyPI (installed
//! into the node's Python by scripts/setup.sh, from requirements-test.txt),
//! run as a Python script against the node.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use crate::models::{digits_dir, model_file, sample_digit};
use crate::support::{repo_root, FnDir, Node};

fn python() -> String {
    std::env::var("SEDGE_PYTHON")
        .unwrap_or_else(|_| repo_root().join(".venv/bin/python").to_string_lossy().into_owned())
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/oip_client.py")
}

/// Runs the tritonclient script against `node`; what it saw, as JSON.
pub(crate) fn client(node: &Node, args: &[&str]) -> Value {
    let host = node.url.trim_start_matches("http://").trim_end_matches('/');
    let (mode, rest) = args.split_first().expect("a mode");
    let out = Command::new(python())
        .arg(script())
        .arg(mode)
        .arg(host)
        .args(rest)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", python()));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the tritonclient script failed (scripts/setup.sh installs tritonclient into the node's Python): {stderr}"
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("the script printed no JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

fn available(node: &Node, name: &str) -> u64 {
    node.describe(name)["availableReplicas"].as_u64().expect("availableReplicas")
}

/// The same two rows the script sends (the sample and its mirror image),
/// through `/function/digits` in the node's own JSON form.
pub(crate) fn through_the_function(node: &Node) -> Value {
    let row = sample_digit();
    let mirror: Vec<f64> = row.iter().rev().copied().collect();
    let body = json!({"inputs": {"pixels": [row, mirror]}}).to_string();
    let a = node.request("POST", "/function/digits", &[("content-type", "application/json")], body.as_bytes());
    assert_eq!(a.status, 200, "{}", a.text());
    let mut by_name = serde_json::Map::new();
    for out in a.json()["outputs"].as_array().expect("outputs") {
        by_name.insert(out["name"].as_str().expect("name").to_owned(), out.clone());
    }
    Value::Object(by_name)
}

fn floats(v: &Value) -> Vec<f64> {
    let mut flat = Vec::new();
    fn walk(v: &Value, flat: &mut Vec<f64>) {
        match v {
            Value::Array(items) => items.iter().for_each(|i| walk(i, flat)),
            other => flat.push(other.as_f64().unwrap_or_else(|| panic!("not a number: {other}"))),
        }
    }
    walk(v, &mut flat);
    flat
}

pub(crate) fn assert_close(got: &Value, want: &Value, what: &str) {
    let (got, want) = (floats(got), floats(want));
    assert_eq!(got.len(), want.len(), "{what}: {got:?} vs {want:?}");
    for (g, w) in got.iter().zip(&want) {
        assert!((g - w).abs() <= 1e-6, "{what}: {got:?} vs {want:?}");
    }
}

#[test]
fn tritonclient_checks_health_reads_metadata_and_infers_in_json_and_binary() {
    let node = Node::start();
    node.deploy(digits_dir("[scale]\nidle = \"10m\"\n").path());
    let hello = FnDir::python("hello", "", "def handle(req):\n    return 'hi'\n");
    node.deploy(hello.path());
    // Scaled to zero, "ready" loads the model again before it answers.
    let out = node.cli(&["scale", "digits", "--replicas", "0"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    node.wait_for("digits scaled to zero", Duration::from_secs(20), |n| available(n, "digits") == 0);
    let ready = node.request("GET", "/v2/models/digits/ready", &[], b"");
    assert_eq!(ready.status, 200, "{}", ready.text());
    assert_eq!(available(&node, "digits"), 1, "ready loaded the model");

    let sample = repo_root().join("examples/functions/digits-python/sample.json");
    let seen = client(&node, &["digits", "digits", sample.to_str().expect("utf-8")]);
    assert_eq!((seen["live"].clone(), seen["ready"].clone()), (json!(true), json!(true)));
    assert_eq!(seen["server"]["name"], "sedge");
    assert_eq!(seen["server"]["extensions"], json!(["binary_tensor_data"]));
    assert_eq!((seen["model_ready"].clone(), seen["version_ready"].clone()), (json!(true), json!(true)));
    let meta = &seen["metadata"];
    assert_eq!(meta["name"], "digits");
    assert_eq!(meta["versions"], json!(["1"]));
    assert_eq!(meta["platform"], "onnxruntime_onnx");
    assert_eq!(meta["inputs"], json!([{"name": "pixels", "datatype": "FP32", "shape": [-1, 64]}]));
    let outputs: Vec<&str> =
        meta["outputs"].as_array().expect("outputs").iter().filter_map(|o| o["name"].as_str()).collect();
    assert_eq!(outputs, ["label", "probabilities"]);
    assert_eq!(seen["version_metadata"], seen["metadata"]);

    // Each way of asking gets the answer /function/digits gives for the same rows.
    let want = through_the_function(&node);
    for (way, binary) in [("json", false), ("binary", true), ("default", true)] {
        let got = &seen[way]["outputs"];
        assert_eq!(seen[way]["model_name"], "digits", "{way}");
        assert_eq!(got["label"]["shape"], json!([2]), "{way}");
        assert_eq!(got["label"]["data"], want["label"]["data"], "{way}: the labels");
        assert_eq!(got["probabilities"]["shape"], json!([2, 10]), "{way}");
        assert_close(&got["probabilities"]["data"], &want["probabilities"]["data"], way);
        assert_eq!(got["label"]["binary"], json!(binary), "{way}: label sent as binary data");
        assert_eq!(got["probabilities"]["binary"], json!(binary), "{way}: probabilities sent as binary data");
    }
    // Only the output asked for, binary though the input was JSON.
    let mixed = seen["mixed"]["outputs"].as_object().expect("outputs");
    assert_eq!(mixed.keys().collect::<Vec<_>>(), ["probabilities"]);
    assert_eq!(mixed["probabilities"]["binary"], true);
    assert_close(&mixed["probabilities"]["data"], &want["probabilities"]["data"], "mixed");

    // Errors reach the client as its exception, naming the problem.
    let wrong = &seen["wrong_shape"];
    assert_eq!(wrong["status"], "400", "{wrong}");
    let message = wrong["message"].as_str().expect("message");
    assert!(message.contains("input \"pixels\"") && message.contains("[N, 64]"), "{message}");
    assert!(seen["wrong_version"]["message"].as_str().is_some_and(|m| m.contains("no version \"2\"")), "{seen}");
    assert_eq!(seen["missing_ready"], false);
    assert_eq!(seen["missing_metadata"]["status"], "404");
    assert!(seen["missing_metadata"]["message"].as_str().is_some_and(|m| m.contains("no-such-model")), "{seen}");

    // A function that is not a model is not one here either.
    let other = client(&node, &["other", "hello"]);
    assert_eq!(other["model_ready"], false);
    assert_eq!(other["metadata"]["status"], "400");
    let message = other["metadata"]["message"].as_str().expect("message");
    assert!(message.contains("hello is not a model function (runtime python)"), "{message}");
}

#[test]
fn the_protocol_honours_invoke_tokens_and_takes_no_other_methods() {
    let node = Node::start();
    let dir =
        FnDir::new("name = \"digits\"\nruntime = \"onnx\"\nhandler = \"model.onnx\"\n[auth]\ninvoke = true\n", &[]);
    std::fs::copy(repo_root().join("examples/functions/digits-python/model.onnx"), dir.path().join("model.onnx"))
        .expect("copy model");
    node.deploy(dir.path());
    let token = node.describe("digits")["sedge"]["auth"]["token"].as_str().expect("a token").to_owned();
    let sample = repo_root().join("examples/functions/digits-python/sample.json");
    let seen = client(&node, &["digits", "digits", sample.to_str().expect("utf-8"), &token]);
    assert_eq!(seen["model_ready"], true, "{seen}");
    assert_eq!(seen["binary"]["outputs"]["label"]["shape"], json!([2]));
    assert_eq!(seen["ready_without_token"], false);
    assert_eq!(seen["infer_without_token"]["status"], "401", "{seen}");
    // Health is the node's, open to all; a model's routes take their methods only.
    assert_eq!(node.request("GET", "/v2/health/live", &[], b"").status, 200);
    let wrong = node.request("DELETE", "/v2/models/digits/infer", &[], b"");
    assert_eq!(wrong.status, 405);
    assert!(wrong.error().contains("does not take DELETE"), "{}", wrong.error());
    // The same infer reached through /function/NAME/v2/infer.
    let body = json!({"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 64], "data": sample_digit()}]});
    let bearer = format!("Bearer {token}");
    let a =
        node.request("POST", "/function/digits/v2/infer", &[("authorization", &bearer)], body.to_string().as_bytes());
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.header("content-type"), Some("application/json"));
    assert_eq!(a.json()["outputs"][0]["name"], "label");
}

#[test]
fn efficientnet_through_tritonclient_matches_onnx_runtime() {
    let Some(model) = model_file("efficientnet-lite0.onnx") else { return };
    let node = Node::start();
    let dir = FnDir::new("name = \"effnet\"\nruntime = \"onnx\"\nhandler = \"efficientnet-lite0.onnx\"\n", &[]);
    std::fs::copy(&model, dir.path().join("efficientnet-lite0.onnx")).expect("copy model");
    node.deploy(dir.path());
    let seen = client(&node, &["effnet", "effnet", model.to_str().expect("utf-8")]);
    assert_eq!(seen["model_ready"], true);
    assert_eq!(seen["metadata"]["inputs"][0]["shape"], json!([1, 3, 224, 224]), "{seen}");
    assert_eq!(seen["shape"], json!([1, 1000]), "{seen}");
    assert_eq!(seen["best"], seen["local_best"], "{seen}");
    let diff = seen["largest_difference"].as_f64().expect("difference");
    assert!(diff < 1e-3, "the node's scores differ from ONNX Runtime's by {diff}");
}
