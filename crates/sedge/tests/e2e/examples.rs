//! The shipped example functions deploy and answer as their READMEs say.

use crate::support::{example, Node};

#[test]
fn hello_examples_answer() {
    let node = Node::start();
    for name in ["hello-python", "hello-node", "echo-exec"] {
        node.deploy(&example(name));
    }
    let py = node.post("/function/hello-python", b"");
    assert_eq!(py.status, 200, "{}", py.text());
    let js = node.post("/function/hello-node", b"");
    assert_eq!(js.status, 200, "{}", js.text());
    let echo = node.post("/function/echo-exec", b"ping");
    assert_eq!((echo.status, echo.text().as_str()), (200, "ping"));
}

#[test]
fn digits_model_classifies_a_real_digit() {
    let node = Node::start();
    let dir = example("digits-python");
    node.deploy(&dir);
    let sample = std::fs::read(dir.join("sample.json")).expect("sample.json");
    let a = node.request("POST", "/function/digits-python", &[("content-type", "application/json")], &sample);
    assert_eq!(a.status, 200, "{}", a.text());
    let v = a.json();
    // sample.json is a real image of a 2 from scikit-learn's digits data set.
    assert_eq!(v["digit"], 2, "{v}");
    let probs = v["probabilities"].as_array().expect("probabilities");
    assert_eq!(probs.len(), 10);
    let sum: f64 = probs.iter().filter_map(|p| p.as_f64()).sum();
    assert!((sum - 1.0).abs() < 1e-3, "probabilities sum to {sum}");

    let bad = node.post("/function/digits-python", br#"{"pixels": [1, 2, 3]}"#);
    assert_eq!(bad.status, 400, "{}", bad.text());
    assert!(bad.error().contains("64"), "{}", bad.text());
}

#[test]
fn a_flask_app_runs_unchanged_behind_the_http_runtime() {
    let node = Node::start();
    node.deploy(&example("flask-http"));
    let hello = node.get("/function/flask-http/");
    assert_eq!(hello.status, 200, "{}", hello.text());
    assert!(hello.text().contains("Flask"));
    let a = node.request(
        "POST",
        "/function/flask-http/normalise",
        &[("content-type", "application/json")],
        br#"{"values": [1, 3]}"#,
    );
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.json()["normalised"], serde_json::json!([0.25, 0.75]));
    let bad = node.request("POST", "/function/flask-http/normalise", &[("content-type", "application/json")], b"{}");
    assert_eq!(bad.status, 400);
    assert_eq!(node.get("/function/flask-http/missing").status, 404);
}

#[test]
fn serve_deploys_folders_given_on_its_command_line() {
    // What the quick start runs: a node serving the example functions.
    let tmp = tempfile::tempdir().expect("tempdir");
    let hello = example("hello-python");
    let echo = example("echo-exec");
    let node = Node::start_with(
        &tmp.path().join("data"),
        &["--deploy", hello.to_str().expect("path"), "--deploy", echo.to_str().expect("path")],
    );
    let a =
        node.request("POST", "/function/hello-python", &[("content-type", "application/json")], br#"{"name": "edge"}"#);
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.json()["message"], "Hello, edge!");
    assert_eq!(node.post("/function/echo-exec", b"x").text(), "x");
}

#[test]
fn the_effnet_onnx_example_names_the_cat() {
    let dir = example("effnet-onnx");
    let picture = crate::support::repo_root().join("models/samples/chelsea.png");
    if !dir.join("efficientnet-lite0.onnx").is_file() || !picture.is_file() {
        eprintln!("skipped: scripts/fetch-models.sh has not put the model in {}", dir.display());
        return;
    }
    let node = Node::start();
    node.deploy(&dir);
    let a = node.request(
        "POST",
        "/function/effnet-onnx",
        &[("content-type", "image/png")],
        &std::fs::read(picture).expect("png"),
    );
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.json()[0]["index"], 282, "{}", a.text());
}

#[test]
fn embed_python_tokenizes_and_calls_the_encoder_the_node_serves() {
    let (model, encoder) = (example("minilm-onnx"), example("embed-python"));
    if !model.join("minilm-l6-v2-int8.onnx").is_file() || !encoder.join("minilm-tokenizer.json").is_file() {
        eprintln!("skipped: scripts/fetch-models.sh has not put MiniLM's files in the examples");
        return;
    }
    let node = Node::start();
    node.deploy(&model);
    // Its requirements.txt (tokenizers) is installed by the node at deploy.
    node.deploy(&encoder);
    let body =
        br#"{"texts": ["A cat sits on the mat.", "A kitten is resting on a rug.", "Stock prices fell sharply."]}"#;
    let a = node.post("/function/embed-python", body);
    assert_eq!(a.status, 200, "{}", a.text());
    let v = a.json();
    assert_eq!(v["dimensions"], 384);
    let similar = v["similarity"].as_f64().expect("similarity");
    assert!((0.55..0.75).contains(&similar), "two sentences about a cat: {similar}");
    assert_eq!(node.post("/function/embed-python", b"{}").status, 400);
}
