//! `runtime = "onnx"`: a model file served by the node itself, through the
//! real ONNX Runtime of the node's Python. The digits MLP ships with the
//! examples; EfficientNet-Lite0 comes from scripts/fetch-models.sh (or the
//! team's shared folder) and its test says so when it is absent.

use std::path::{Path, PathBuf};

use crate::support::{repo_root, FnDir, Node};

pub(crate) fn digits_dir(extra: &str) -> FnDir {
    let dir = FnDir::new(&format!("name = \"digits\"\nruntime = \"onnx\"\nhandler = \"model.onnx\"\n{extra}"), &[]);
    std::fs::copy(repo_root().join("examples/functions/digits-python/model.onnx"), dir.path().join("model.onnx"))
        .expect("copy model");
    dir
}

pub(crate) fn sample_digit() -> Vec<f64> {
    let text =
        std::fs::read_to_string(repo_root().join("examples/functions/digits-python/sample.json")).expect("sample");
    let v: serde_json::Value = serde_json::from_str(&text).expect("json");
    v["pixels"].as_array().expect("pixels").iter().filter_map(|x| x.as_f64()).collect()
}

pub(crate) fn model_file(name: &str) -> Option<PathBuf> {
    let found = [repo_root().join("models"), repo_root().join("../shared/models")]
        .into_iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file());
    if found.is_none() {
        eprintln!("skipped: {name} is not on this machine (scripts/fetch-models.sh gets it)");
    }
    found
}

#[test]
fn a_model_answers_json_tensors_and_names_a_wrong_shape() {
    let node = Node::start();
    let dir = digits_dir("[batching]\nmax_batch = 8\nmax_delay = \"2ms\"\n");
    node.deploy(dir.path());
    let body = serde_json::json!({"inputs": {"pixels": [sample_digit()]}}).to_string();
    let a = node.request("POST", "/function/digits", &[("content-type", "application/json")], body.as_bytes());
    assert_eq!(a.status, 200, "{}", a.text());
    let v = a.json();
    let label = v["outputs"].as_array().expect("outputs").iter().find(|o| o["name"] == "label").expect("label").clone();
    assert_eq!(label["shape"], serde_json::json!([1]));
    assert_eq!(label["datatype"], "INT64");
    let bad = serde_json::json!({"inputs": {"pixels": [[1.0, 2.0]]}}).to_string();
    let a = node.request("POST", "/function/digits", &[("content-type", "application/json")], bad.as_bytes());
    assert_eq!(a.status, 400);
    assert!(a.error().contains("input \"pixels\" must have shape [N, 64] (FP32)"), "{}", a.error());
    // It runs in the node, and describe says so.
    let isolation = node.describe("digits")["sedge"]["isolation"].clone();
    assert_eq!(
        (isolation["sandboxed"].as_bool(), isolation["inProcess"].as_bool()),
        (Some(false), Some(true)),
        "{isolation}"
    );
    // GET describes what the model takes.
    let meta = node.get("/function/digits").json();
    assert_eq!(meta["inputs"][0]["name"], "pixels");
    let logs = node.get("/system/logs?name=digits").text();
    assert!(logs.contains("loaded model.onnx"), "{logs}");
}

#[test]
fn a_bad_model_file_or_manifest_is_refused_at_deploy() {
    let node = Node::start();
    let dir = FnDir::new(
        "name = \"broken\"\nruntime = \"onnx\"\nhandler = \"model.onnx\"\n",
        &[("model.onnx", "not a model")],
    );
    let out = node.cli(&["deploy", "--wait", dir.path().to_str().expect("utf-8")]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not a model ONNX Runtime can load"), "{stderr}");
    let escape = FnDir::new("name = \"escape\"\nruntime = \"onnx\"\nhandler = \"../model.onnx\"\n", &[]);
    let out = node.cli(&["deploy", escape.path().to_str().expect("utf-8")]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("field `handler`"));
    let model_for_python = FnDir::python("py", "[batching]\nmax_batch = 2\n", "def handle(req):\n    return 1\n");
    let out = node.cli(&["deploy", model_for_python.path().to_str().expect("utf-8")]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("[batching] is for model functions"));
}

#[test]
fn without_onnx_runtime_model_functions_are_refused_and_the_rest_works() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let node =
        Node::start_with_env(&tmp.path().join("data"), &[], &[("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so")]);
    let dir = digits_dir("");
    let out = node.cli(&["deploy", "--wait", dir.path().to_str().expect("utf-8")]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("ONNX Runtime is not available") && stderr.contains("pip install onnxruntime"), "{stderr}");
    let py = FnDir::python("still", "", "def handle(req):\n    return 'fine'\n");
    node.deploy(py.path());
    assert_eq!(node.post("/function/still", b"").text(), "fine");
}

/// An onnx function `name` serving EfficientNet-Lite0 on pictures (top 3,
/// labelled), when the model is on this machine.
pub(crate) fn effnet_dir(name: &str) -> Option<FnDir> {
    let (model, labels) = (model_file("efficientnet-lite0.onnx")?, model_file("imagenet-labels.json")?);
    let manifest = format!(
        "name = \"{name}\"\nruntime = \"onnx\"\nhandler = \"efficientnet-lite0.onnx\"\n\
         [model]\nlabels = \"imagenet-labels.json\"\n[model.image]\nresize = 256\ncrop = 224\n\
         mean = [127.0, 127.0, 127.0]\nstd = [128.0, 128.0, 128.0]\n[model.output]\nsoftmax = true\ntop_k = 3\n"
    );
    let dir = FnDir::new(&manifest, &[]);
    copy(&model, dir.path());
    copy(&labels, dir.path());
    Some(dir)
}

#[test]
fn efficientnet_names_the_cat_in_a_png_and_a_jpeg() {
    let (Some(dir), Some(cat), Some(rocket)) =
        (effnet_dir("effnet"), model_file("samples/chelsea.png"), model_file("samples/rocket.jpg"))
    else {
        return;
    };
    let node = Node::start();
    node.deploy(dir.path());
    let a =
        node.request("POST", "/function/effnet", &[("content-type", "image/png")], &std::fs::read(cat).expect("png"));
    assert_eq!(a.status, 200, "{}", a.text());
    let best = a.json();
    assert_eq!(best[0]["index"], 282, "{best}");
    assert!(best[0]["score"].as_f64().is_some_and(|s| s > 0.0 && s <= 1.0));
    let a = node.request(
        "POST",
        "/function/effnet",
        &[("content-type", "image/jpeg")],
        &std::fs::read(rocket).expect("jpg"),
    );
    assert_eq!(a.json()[0]["index"], 657, "{}", a.text());
    let a = node.request("POST", "/function/effnet", &[("content-type", "image/png")], b"not a png");
    assert_eq!(a.status, 400);
    assert!(a.error().contains("image"), "{}", a.error());
}

fn copy(file: &Path, dir: &Path) {
    std::fs::copy(file, dir.join(file.file_name().expect("name"))).expect("copy");
}
