//! The served model against real networks and the real ONNX Runtime (from
//! the node's Python, as a node finds it): the digits MLP shipped in the
//! examples, and EfficientNet-Lite0 from the shared models when present.

use std::path::PathBuf;
use std::time::Duration;

use sedge_core::model::{Batching, ImagePrep, ModelInput, ModelSpec, OutputSpec};
use sedge_core::Invocation;
use sedge_onnx::serve::RunError;
use sedge_onnx::tensor::{Data, Tensor};
use sedge_onnx::{Model, Served};
use tokio::time::Instant;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn python() -> String {
    std::env::var("SEDGE_PYTHON").unwrap_or_else(|_| repo().join(".venv/bin/python").to_string_lossy().into_owned())
}

fn tensor_spec(batching: Option<Batching>) -> ModelSpec {
    ModelSpec {
        input: ModelInput::Tensor,
        labels: None,
        output: OutputSpec { softmax: false, top_k: 5 },
        batching,
        instances: None,
        threads: None,
    }
}

/// The example's sample digit, 64 pixel values.
fn digit() -> Vec<f32> {
    let text = std::fs::read_to_string(repo().join("examples/functions/digits-python/sample.json")).expect("sample");
    let v: serde_json::Value = serde_json::from_str(&text).expect("json");
    v["pixels"].as_array().expect("pixels").iter().filter_map(|x| x.as_f64()).map(|x| x as f32).collect()
}

fn invocation(content_type: &str, body: Vec<u8>) -> Invocation {
    Invocation {
        method: "POST".into(),
        path: "/".into(),
        query: String::new(),
        headers: vec![("content-type".into(), content_type.into())],
        body: body.into(),
    }
}

#[tokio::test]
async fn digits_are_recognised_one_by_one_and_batched() {
    let path = repo().join("examples/functions/digits-python/model.onnx");
    let model = Model::load(&path, &python(), 1, 1).expect("load digits");
    assert!(model.batches(), "the digits MLP takes any number of rows");
    let batching = Batching { max_batch: 8, max_delay: Duration::from_millis(20) };
    let served =
        std::sync::Arc::new(Served::start("digits", model, tensor_spec(Some(batching)), None, 64).expect("serve"));
    served.warm().await.expect("warm");
    let flat = digit();
    assert_eq!(flat.len(), 64);
    // Eight callers at once, one row each: stacked into a batch, split back.
    let mut calls = Vec::new();
    for i in 0..8 {
        let row: Vec<f32> = flat.iter().map(|p| p + i as f32 * 0.0).collect();
        let served = served.clone();
        calls.push(tokio::spawn(async move {
            let t = Tensor::new("pixels", vec![1, 64], Data::F32(row)).expect("tensor");
            served.infer(vec![t], Instant::now() + Duration::from_secs(10)).await
        }));
    }
    for c in calls {
        let outputs = c.await.expect("join").expect("infer");
        let label = outputs.iter().find(|t| t.name == "label").expect("label output");
        assert_eq!(label.shape, [1], "one row back per caller");
    }
    // Over HTTP-shaped input: JSON in, JSON tensors out.
    let body = serde_json::json!({"inputs": {"pixels": [flat[..64].to_vec()]}}).to_string().into_bytes();
    let reply = served
        .answer(&invocation("application/json", body), Instant::now() + Duration::from_secs(10))
        .await
        .expect("answer");
    assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.body));
    let v: serde_json::Value = serde_json::from_slice(&reply.body).expect("json");
    assert_eq!(v["outputs"][0]["name"], "label");
    // A wrong shape names the input and the shape it needs.
    let bad = serde_json::json!({"inputs": {"pixels": [[1.0, 2.0]]}}).to_string().into_bytes();
    let reply = served
        .answer(&invocation("application/json", bad), Instant::now() + Duration::from_secs(10))
        .await
        .expect("answer");
    assert_eq!(reply.status, 400);
    assert!(String::from_utf8_lossy(&reply.body).contains("must have shape [N, 64] (FP32)"));
}

fn oip_invocation(method: &str, path: &str, headers: &[(&str, String)], body: Vec<u8>) -> Invocation {
    Invocation {
        method: method.into(),
        path: path.into(),
        query: String::new(),
        headers: headers.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect(),
        body: body.into(),
    }
}

#[tokio::test]
async fn the_inference_protocol_takes_and_gives_json_and_binary_tensors() {
    let path = repo().join("examples/functions/digits-python/model.onnx");
    let model = Model::load(&path, &python(), 1, 1).expect("load digits");
    let served = Served::start("digits", model, tensor_spec(None), None, 8).expect("serve");
    let soon = || Instant::now() + Duration::from_secs(10);
    let meta = served.answer(&oip_invocation("GET", "/v2/metadata", &[], vec![]), soon()).await.expect("meta");
    let meta: serde_json::Value = serde_json::from_slice(&meta.body).expect("json");
    assert_eq!(meta["versions"], serde_json::json!(["1"]));
    assert_eq!(meta["inputs"][0], serde_json::json!({"name": "pixels", "datatype": "FP32", "shape": [-1, 64]}));
    let flat = digit();
    // JSON in, JSON out, only the output asked for.
    let body = serde_json::json!({"id": "a", "inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 64], "data": flat}],
                                  "outputs": [{"name": "label"}]});
    let reply = served
        .answer(&oip_invocation("POST", "/v2/infer", &[], body.to_string().into_bytes()), soon())
        .await
        .expect("infer");
    assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.body));
    assert!(reply.headers.iter().any(|(k, v)| k == "content-type" && v == "application/json"));
    let v: serde_json::Value = serde_json::from_slice(&reply.body).expect("json");
    assert_eq!(v["id"], "a");
    assert_eq!(v["outputs"].as_array().map(Vec::len), Some(1));
    let label = v["outputs"][0]["data"][0].as_i64().expect("label");
    // Binary in, binary out: the same digit gets the same label.
    let raw: Vec<u8> = flat.iter().flat_map(|x| x.to_le_bytes()).collect();
    let head = serde_json::json!({"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 64],
                                              "parameters": {"binary_data_size": raw.len()}}],
                                  "parameters": {"binary_data_output": true}})
    .to_string();
    let mut body = head.clone().into_bytes();
    body.extend_from_slice(&raw);
    let reply = served
        .answer(
            &oip_invocation("POST", "/v2/infer", &[("inference-header-content-length", head.len().to_string())], body),
            soon(),
        )
        .await
        .expect("infer");
    assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.body));
    let json_len: usize = reply
        .headers
        .iter()
        .find(|(k, _)| k == "inference-header-content-length")
        .and_then(|(_, v)| v.parse().ok())
        .expect("a binary answer says its JSON length");
    let v: serde_json::Value = serde_json::from_slice(&reply.body[..json_len]).expect("head");
    let names: Vec<&str> =
        v["outputs"].as_array().expect("outputs").iter().filter_map(|o| o["name"].as_str()).collect();
    assert_eq!(names, ["label", "probabilities"]);
    assert_eq!(v["outputs"][0]["parameters"]["binary_data_size"], 8);
    assert_eq!(v["outputs"][1]["parameters"]["binary_data_size"], 40);
    let tail = &reply.body[json_len..];
    assert_eq!(tail.len(), 48);
    let mut first = [0u8; 8];
    first.copy_from_slice(&tail[..8]);
    assert_eq!(i64::from_le_bytes(first), label);
    // What the caller got wrong is named, with 400.
    let cases = [
        (
            serde_json::json!({"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}]}),
            "[N, 64]",
        ),
        (
            serde_json::json!({"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 64], "data": flat}],
                            "outputs": [{"name": "labels"}]}),
            "no output \"labels\"",
        ),
        (serde_json::json!({"nothing": 1}), "\"inputs\""),
    ];
    for (body, says) in cases {
        let reply = served
            .answer(&oip_invocation("POST", "/v2/infer", &[], body.to_string().into_bytes()), soon())
            .await
            .expect("answer");
        assert_eq!(reply.status, 400);
        let error: serde_json::Value = serde_json::from_slice(&reply.body).expect("json");
        assert!(error["error"].as_str().is_some_and(|e| e.contains(says)), "{error} should say {says}");
    }
    let gzip = [("content-encoding", "gzip".to_owned())];
    let reply =
        served.answer(&oip_invocation("POST", "/v2/infer", &gzip, b"\x1f\x8b".to_vec()), soon()).await.expect("answer");
    assert_eq!(reply.status, 415);
    assert!(String::from_utf8_lossy(&reply.body).contains("Content-Encoding gzip"));
    let bad_len = [("inference-header-content-length", "many".to_owned())];
    let reply =
        served.answer(&oip_invocation("POST", "/v2/infer", &bad_len, b"{}".to_vec()), soon()).await.expect("answer");
    assert_eq!(reply.status, 400);
}

#[tokio::test]
async fn a_caller_past_its_deadline_is_not_run() {
    let path = repo().join("examples/functions/digits-python/model.onnx");
    let model = Model::load(&path, &python(), 1, 1).expect("load digits");
    let served =
        Served::start("digits", model, tensor_spec(None), None, 4).expect("serve").with_timeout(Duration::from_secs(7));
    let t = Tensor::new("pixels", vec![1, 64], Data::F32(vec![0.0; 64])).expect("tensor");
    let gone = Instant::now() - Duration::from_millis(1);
    assert_eq!(served.infer(vec![t], gone).await, Err(RunError::Late));
    // Over HTTP the caller is told the function's timeout, not what was left of it.
    let body = serde_json::json!({"inputs": {"pixels": [vec![0.0; 64]]}}).to_string().into_bytes();
    let late = served.answer(&invocation("application/json", body), gone).await.expect_err("late");
    assert_eq!(late, sedge_core::InvokeError::Timeout { function: "digits".into(), timeout_ms: 7000 });
}

#[tokio::test]
async fn batching_a_model_with_a_fixed_batch_is_refused_at_start() {
    let Some(effnet) = shared("efficientnet-lite0.onnx") else { return };
    let model = Model::load(&effnet, &python(), 1, 1).expect("load");
    let batching = Batching { max_batch: 4, max_delay: Duration::from_millis(2) };
    let err = Served::start("effnet", model, tensor_spec(Some(batching)), None, 4).err().expect("refused").to_string();
    assert!(err.contains("[batching] needs a model") && err.contains("[1, 3, 224, 224]"), "{err}");
}

/// A model from `scripts/fetch-models.sh`'s folder, or the team's shared one.
fn shared(name: &str) -> Option<PathBuf> {
    let found = [repo().join("models"), repo().join("../shared/models")]
        .into_iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file());
    if found.is_none() {
        eprintln!("skipped: {name} is not on this machine (scripts/fetch-models.sh gets it)");
    }
    found
}

#[tokio::test]
async fn efficientnet_names_the_cat_in_a_png() {
    let (Some(effnet), Some(labels), Some(cat)) =
        (shared("efficientnet-lite0.onnx"), shared("imagenet-labels.json"), shared("samples/chelsea.png"))
    else {
        return;
    };
    let model = Model::load(&effnet, &python(), 1, 1).expect("load");
    let spec = ModelSpec {
        input: ModelInput::Image(ImagePrep {
            resize: Some(256),
            crop: Some(224),
            mean: [127.0; 3],
            std: [128.0; 3],
            layout: None,
            bgr: false,
        }),
        labels: Some("imagenet-labels.json".into()),
        output: OutputSpec { softmax: true, top_k: 3 },
        batching: None,
        instances: None,
        threads: None,
    };
    let text = std::fs::read_to_string(labels).expect("labels");
    let served = Served::start("effnet", model, spec, Some(&text), 8).expect("serve");
    let reply = served
        .answer(&invocation("image/png", std::fs::read(cat).expect("png")), Instant::now() + Duration::from_secs(30))
        .await
        .expect("answer");
    assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.body));
    let best: serde_json::Value = serde_json::from_slice(&reply.body).expect("json");
    let top: Vec<i64> = best.as_array().expect("list").iter().filter_map(|c| c["index"].as_i64()).collect();
    assert_eq!(top.len(), 3);
    assert_eq!(top[0], 282, "tiger cat first: {best}");
    assert!(top.contains(&285) || top.contains(&281), "another cat next: {best}");
    assert_eq!(best[0]["label"], "a cat having a striped coat", "the label file names class 282 so");
}

#[tokio::test]
async fn inputs_are_made_on_the_sessions_thread_and_never_for_a_caller_that_left() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let path = repo().join("examples/functions/digits-python/model.onnx");
    let model = Model::load(&path, &python(), 1, 1).expect("load digits");
    // A lone caller waits up to a second for another to join its batch.
    let batching = Batching { max_batch: 2, max_delay: Duration::from_secs(1) };
    let served = Arc::new(Served::start("digits", model, tensor_spec(Some(batching)), None, 4).expect("serve"));
    let made = Arc::new(AtomicBool::new(false));
    let flag = made.clone();
    let inputs: sedge_onnx::serve::Inputs = Box::new(move || {
        flag.store(true, Ordering::SeqCst);
        Ok(vec![Tensor::new("pixels", vec![1, 64], Data::F32(vec![0.0; 64]))?])
    });
    let far = Instant::now() + Duration::from_secs(30);
    let left = tokio::time::timeout(Duration::from_millis(50), served.infer_with(inputs, far)).await;
    assert!(left.is_err(), "the caller hangs up while its request waits");
    // Its batch's delay passes; a new caller runs and the one that left is skipped.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let runtime_thread = std::thread::current().id();
    let seen = Arc::new(std::sync::Mutex::new(None));
    let on = seen.clone();
    let inputs: sedge_onnx::serve::Inputs = Box::new(move || {
        *on.lock().expect("lock") = Some(std::thread::current().id());
        Ok(vec![Tensor::new("pixels", vec![1, 64], Data::F32(vec![0.0; 64]))?])
    });
    served.infer_with(inputs, far).await.expect("a run");
    assert!(!made.load(Ordering::SeqCst), "the inputs of a caller that left are never made");
    let thread = seen.lock().expect("lock").expect("made");
    assert_ne!(thread, runtime_thread, "inputs are made off the async thread");
    // A body that is not the model's input is the caller's error.
    let bad: sedge_onnx::serve::Inputs = Box::new(|| Err("input \"pixels\" must have shape [N, 64]".to_owned()));
    assert!(matches!(served.infer_with(bad, far).await, Err(RunError::Invalid(e)) if e.contains("[N, 64]")));
}

#[test]
fn one_session_run_from_many_threads_at_once_answers_each_its_own() {
    let path = repo().join("examples/functions/digits-python/model.onnx");
    let model = std::sync::Arc::new(Model::load(&path, &python(), 4, 1).expect("load digits"));
    assert_eq!((model.sessions(), model.instances()), (1, 4), "one session, four runners");
    let base = digit();
    // Each thread's rows differ, so a mixed-up answer shows.
    let input = |k: usize| {
        let data: Vec<f32> = base.iter().map(|x| x * (1.0 + k as f32 / 8.0)).collect();
        vec![Tensor::new("pixels", vec![1, 64], Data::F32(data)).expect("tensor")]
    };
    let alone: Vec<Vec<Tensor>> = (0..4).map(|k| model.run(0, &input(k)).expect("a run")).collect();
    std::thread::scope(|s| {
        for (k, expected) in alone.iter().enumerate() {
            let model = model.clone();
            s.spawn(move || {
                for _ in 0..200 {
                    assert_eq!(&model.run(k, &input(k)).expect("a run"), expected, "runner {k}");
                }
            });
        }
    });
}

#[tokio::test]
async fn a_model_that_gave_its_arena_back_while_quiet_answers_as_before() {
    let path = repo().join("examples/functions/digits-python/model.onnx");
    let model = Model::load(&path, &python(), 2, 1).expect("load digits");
    let served = Served::start("digits", model, tensor_spec(None), None, 4).expect("serve");
    let pixels = || vec![Tensor::new("pixels", vec![1, 64], Data::F32(digit())).expect("tensor")];
    let soon = || Instant::now() + Duration::from_secs(10);
    let before = served.infer(pixels(), soon()).await.expect("a run");
    // Quiet past the release (a run on zeros that shrinks the arena), then asked again.
    tokio::time::sleep(Duration::from_millis(2600)).await;
    let after = served.infer(pixels(), soon()).await.expect("a run after the release");
    assert_eq!(before, after, "the same digit, the same answer");
}
