//! Functions calling models the node serves (`sedge.infer`): a Python or
//! Node.js function declares `models = ["digits"]` and runs the digits MLP
//! (an onnx function) over the worker protocol; one loaded model serves
//! every caller. Errors (an undeclared, missing or non-model function) are
//! raised inside the function.

use std::time::Duration;

use crate::support::{repo_root, sample, FnDir, Node};

fn digits_model(extra: &str) -> FnDir {
    let dir = FnDir::new(&format!("name = \"digits\"\nruntime = \"onnx\"\nhandler = \"model.onnx\"\n{extra}"), &[]);
    std::fs::copy(repo_root().join("examples/functions/digits-python/model.onnx"), dir.path().join("model.onnx"))
        .expect("copy model");
    dir
}

pub(crate) fn sample_body() -> Vec<u8> {
    std::fs::read(repo_root().join("examples/functions/digits-python/sample.json")).expect("sample")
}

/// The label the model itself gives the sample, asked over HTTP.
pub(crate) fn label_over_http(node: &Node) -> i64 {
    let v: serde_json::Value = serde_json::from_slice(&sample_body()).expect("json");
    let body = serde_json::json!({"inputs": {"pixels": [v["pixels"]]}}).to_string();
    let a = node.request("POST", "/function/digits", &[("content-type", "application/json")], body.as_bytes());
    assert_eq!(a.status, 200, "{}", a.text());
    let outputs = a.json()["outputs"].as_array().expect("outputs").clone();
    let label = outputs.iter().find(|o| o["name"] == "label").expect("a label output");
    label["data"][0].as_i64().expect("a label")
}

pub(crate) const PYTHON_CALLER: &str = r#"import numpy as np
import sedge

def handle(req):
    pixels = np.array(req.json()["pixels"], dtype=np.float32).reshape(1, 64)
    out = sedge.infer("digits", pixels)
    named = sedge.infer("digits", {"pixels": pixels})
    listed = sedge.infer("digits", pixels.tolist())
    return {
        "label": int(out["label"][0]),
        "argmax": int(out["probabilities"][0].argmax()),
        "shape": list(out["probabilities"].shape),
        "dtype": str(out["probabilities"].dtype),
        # Close, not equal: a row run in a batch with others may round differently.
        "same": bool(np.allclose(named["probabilities"], out["probabilities"], atol=1e-5))
                and listed["label"].tolist() == out["label"].tolist(),
    }
"#;

#[test]
fn a_python_function_calls_the_model_from_many_threads() {
    let node = Node::start();
    node.deploy(digits_model("[batching]\nmax_batch = 8\nmax_delay = \"2ms\"\n").path());
    let caller = FnDir::python("reader", "models = [\"digits\"]\n[scale]\nmax = 1\nconcurrency = 4\n", PYTHON_CALLER);
    node.deploy(caller.path());
    let expected = label_over_http(&node);
    let answers: Vec<serde_json::Value> = std::thread::scope(|s| {
        let calls: Vec<_> = (0..8).map(|_| s.spawn(|| node.post("/function/reader", &sample_body()))).collect();
        calls
            .into_iter()
            .map(|c| {
                let a = c.join().expect("a caller thread");
                assert_eq!(a.status, 200, "{}", a.text());
                a.json()
            })
            .collect()
    });
    for v in answers {
        assert_eq!(v["label"], expected, "{v}");
        assert_eq!(v["argmax"], expected, "{v}");
        assert_eq!(v["shape"], serde_json::json!([1, 10]), "{v}");
        assert_eq!(v["dtype"], "float32", "{v}");
        assert_eq!(v["same"], true, "{v}");
    }
    // Every call went to the one model function: 3 from each of 8
    // invocations, and the one over HTTP.
    let described = node.describe("digits");
    assert_eq!(described["invocationCount"], 25, "{described}");
    assert_eq!(described["availableReplicas"], 1, "{described}");
    // The model's own figures: every request counted once, by the runs
    // that answered it (several to a run when batched) and by its wait.
    let metrics = node.get("/metrics").text();
    let f = [("function_name", "digits.openfaas-fn")];
    let get = |name: &str| sample(&metrics, name, &f).unwrap_or_else(|| panic!("no {name} in\n{metrics}"));
    assert_eq!(get("sedge_model_requests_total"), 25.0, "{metrics}");
    let runs = get("sedge_model_runs_total");
    assert!((1.0..=25.0).contains(&runs), "{metrics}");
    assert_eq!(get("sedge_model_queue_seconds_count"), 25.0, "{metrics}");
    assert_eq!(get("sedge_model_run_seconds_count"), runs, "{metrics}");
    assert!(get("sedge_model_run_seconds_sum") > 0.0, "{metrics}");
    let all = [("function_name", "digits.openfaas-fn"), ("le", "+Inf")];
    assert_eq!(sample(&metrics, "sedge_model_run_seconds_bucket", &all), Some(runs), "{metrics}");
    let model = &node.describe("digits")["sedge"]["model"];
    assert_eq!(model["requests"], 25, "{model}");
    assert_eq!(model["runs"].as_f64(), Some(runs), "{model}");
    assert!(model["meanRunMs"].as_f64().is_some_and(|ms| ms > 0.0), "{model}");
    assert!(model["meanQueueMs"].as_f64().is_some_and(|ms| ms >= 0.0), "{model}");
    assert!(node.describe("reader")["sedge"]["model"].is_null(), "a Python caller serves no model");
    // Python callers run no model of their own.
    assert_eq!(sample(&metrics, "sedge_model_runs_total", &[("function_name", "reader.openfaas-fn")]), None);
}

pub(crate) const ERRORS: &str = r#"import numpy as np
import sedge

def handle(req):
    pixels = np.zeros((1, 64), dtype=np.float32)
    answers = {}
    for model, given in [("effnet", pixels), ("ghost", pixels), ("plain", pixels),
                         ("digits", np.zeros((1, 3), dtype=np.float32))]:
        try:
            sedge.infer(model, given)
            answers[model] = "no error"
        except sedge.InferError as e:
            answers[model] = str(e)
    return answers
"#;

#[test]
fn undeclared_missing_and_non_model_functions_are_errors_inside_the_function() {
    let node = Node::start();
    node.deploy(digits_model("").path());
    let plain = FnDir::python("plain", "", "def handle(req):\n    return 'plain'\n");
    node.deploy(plain.path());
    let caller = FnDir::python("asker", "models = [\"digits\", \"ghost\", \"plain\"]\n", ERRORS);
    node.deploy(caller.path());
    let a = node.post("/function/asker", b"");
    assert_eq!(a.status, 200, "{}", a.text());
    errors_as_expected(&a.json());
}

/// What the `ERRORS` caller saw of each kind of failed model call.
pub(crate) fn errors_as_expected(v: &serde_json::Value) {
    assert_eq!(v["effnet"], "effnet is not in this function's models = [\"digits\", \"ghost\", \"plain\"]", "{v}");
    assert_eq!(v["ghost"], "model ghost is not deployed on this node", "{v}");
    assert_eq!(v["plain"], "plain is not a model function (runtime python)", "{v}");
    let shape = v["digits"].as_str().expect("a message");
    assert!(shape.contains("input \"pixels\" must have shape [N, 64]"), "{v}");
}

#[test]
fn a_model_scaled_to_zero_is_loaded_on_the_first_call() {
    let node = Node::start();
    node.deploy(digits_model("[scale]\nidle = \"1s\"\n").path());
    let caller = FnDir::python("reader", "models = [\"digits\"]\n", PYTHON_CALLER);
    node.deploy(caller.path());
    node.wait_for("the model to unload", Duration::from_secs(30), |n| {
        n.describe("digits")["availableReplicas"].as_u64() == Some(0)
    });
    let a = node.post("/function/reader", &sample_body());
    assert_eq!(a.status, 200, "{}", a.text());
    let metrics = node.get("/metrics").text();
    let cold = sample(&metrics, "sedge_cold_starts_total", &[("function_name", "digits.openfaas-fn")]);
    assert_eq!(cold, Some(2.0), "{metrics}");
    assert_eq!(a.json()["label"], label_over_http(&node));
}

const NODE_CALLER: &str = r#"const sedge = require('sedge');

exports.handle = async (req) => {
  const pixels = Float32Array.from(req.json().pixels);
  const out = await sedge.infer('digits', { data: pixels, shape: [1, 64] });
  const named = await sedge.infer('digits', { pixels: { data: pixels, shape: [1, 64] } });
  let undeclared = 'no error';
  try {
    await sedge.infer('effnet', { data: pixels, shape: [1, 64] });
  } catch (err) {
    undeclared = `${err.name}: ${err.message}`;
  }
  const probabilities = Array.from(out.probabilities.data);
  return {
    label: Number(out.label.data[0]),
    labelType: out.label.data.constructor.name,
    argmax: probabilities.indexOf(Math.max(...probabilities)),
    shape: out.probabilities.shape,
    same: Number(named.label.data[0]) === Number(out.label.data[0]),
    undeclared,
  };
};
"#;

#[test]
fn a_node_function_awaits_the_model() {
    let node = Node::start();
    node.deploy(digits_model("").path());
    let manifest = "name = \"js-reader\"\nruntime = \"node\"\nhandler = \"handler.handle\"\nmodels = [\"digits\"]\n\
                    [scale]\nconcurrency = 4\n";
    let caller = FnDir::new(manifest, &[("handler.js", NODE_CALLER)]);
    node.deploy(caller.path());
    let expected = label_over_http(&node);
    let a = node.post("/function/js-reader", &sample_body());
    assert_eq!(a.status, 200, "{}", a.text());
    let v = a.json();
    assert_eq!(v["label"], expected, "{v}");
    assert_eq!(v["argmax"], expected, "{v}");
    assert_eq!(v["labelType"], "BigInt64Array", "{v}");
    assert_eq!(v["shape"], serde_json::json!([1, 10]), "{v}");
    assert_eq!(v["same"], true, "{v}");
    assert_eq!(v["undeclared"], "InferError: effnet is not in this function's models = [\"digits\"]", "{v}");
}

pub(crate) const EFFNET_CALLER: &str = r#"import numpy as np
import sedge

def handle(req):
    classes = sedge.infer("effnet", req.body)
    logits = sedge.infer("effnet", np.zeros((1, 3, 224, 224), dtype=np.float32))
    return {"best": classes[0]["index"], "label": classes[0]["label"], "logits": list(logits.shape)}
"#;

#[test]
fn a_python_function_sends_a_picture_and_a_full_size_tensor_to_efficientnet() {
    let (Some(dir), Some(cat)) =
        (crate::models::effnet_dir("effnet"), crate::models::model_file("samples/chelsea.png"))
    else {
        return;
    };
    let node = Node::start();
    node.deploy(dir.path());
    let caller = FnDir::python("cats", "models = [\"effnet\"]\n[limits]\nmax_body = \"8MiB\"\n", EFFNET_CALLER);
    node.deploy(caller.path());
    let a = node.post("/function/cats", &std::fs::read(cat).expect("png"));
    assert_eq!(a.status, 200, "{}", a.text());
    let v = a.json();
    assert_eq!(v["best"], 282, "{v}");
    assert!(v["label"].as_str().is_some_and(|l| !l.is_empty()), "{v}");
    assert_eq!(v["logits"], serde_json::json!([1, 1000]), "{v}");
}

/// A caller that says which process it is, or calls the digits model
/// until it is stopped: it is always waiting on a model call.
const WAITING_CALLER: &str = r#"import json, os
import numpy as np
import sedge

def handle(req):
    if req.text == "who":
        return json.dumps({"pid": os.getpid(), "ns": os.readlink("/proc/self/ns/pid")})
    while True:
        sedge.infer("digits", np.zeros((1, 64), dtype=np.float32))
"#;

/// The model's workers holding a call; 0 once every call it took has ended.
fn busy(node: &Node, name: &str) -> u64 {
    node.describe(name)["sedge"]["workers"]["busy"].as_u64().expect("busy")
}

/// The model serves other callers: two requests fill its batch of two.
fn serves_others(node: &Node) {
    std::thread::scope(|s| {
        let calls: Vec<_> = (0..2).map(|_| s.spawn(|| label_over_http(node))).collect();
        for c in calls {
            c.join().expect("a caller thread");
        }
    });
}

/// A model whose lone caller waits a second for another to join it: a
/// caller's calls spend nearly all their time queued in the model.
fn slow_batching_digits() -> FnDir {
    digits_model("[batching]\nmax_batch = 2\nmax_delay = \"1s\"\n")
}

#[test]
fn a_model_call_past_the_callers_deadline_answers_504_and_leaves_nothing_behind() {
    let node = Node::start();
    node.deploy(slow_batching_digits().path());
    let caller = FnDir::python("hasty", "models = [\"digits\"]\n[limits]\ntimeout = \"2s\"\n", WAITING_CALLER);
    node.deploy(caller.path());
    let a = node.post("/function/hasty", b"wait");
    assert_eq!(a.status, 504, "{}", a.text());
    assert!(a.error().contains("hasty"), "{}", a.text());
    node.wait_for("the model to let the late call go", Duration::from_secs(20), |n| busy(n, "digits") == 0);
    serves_others(&node);
    assert_eq!(busy(&node, "digits"), 0);
    assert_eq!(node.post("/function/hasty", b"who").status, 200, "the caller serves again");
}

#[test]
fn a_caller_killed_while_its_model_call_is_queued_answers_502_and_the_call_goes_with_it() {
    let node = Node::start();
    node.deploy(slow_batching_digits().path());
    let manifest = "models = [\"digits\"]\n[limits]\ntimeout = \"120s\"\n[scale]\nmax = 1\nconcurrency = 2\n";
    let caller = FnDir::python("doomed", manifest, WAITING_CALLER);
    node.deploy(caller.path());
    let who = node.post("/function/doomed", b"who");
    assert_eq!(who.status, 200, "{}", who.text());
    let pid = crate::hostile::host_pid(&who.json());
    std::thread::scope(|s| {
        let waiting = s.spawn(|| node.post("/function/doomed", b"wait"));
        node.wait_for("the call to reach the model", Duration::from_secs(30), |n| busy(n, "digits") == 1);
        crate::hostile::signal(pid, "-KILL");
        let a = waiting.join().expect("the waiting caller");
        assert_eq!(a.status, 502, "{}", a.text());
        assert!(a.error().contains("doomed"), "{}", a.text());
    });
    node.wait_for("the model to let the dead caller's call go", Duration::from_secs(20), |n| busy(n, "digits") == 0);
    serves_others(&node);
    assert_eq!(busy(&node, "digits"), 0);
    let again = node.post("/function/doomed", b"who");
    assert_eq!(again.status, 200, "{}", again.text());
    assert_ne!(crate::hostile::host_pid(&again.json()), pid, "a new worker serves");
}

#[test]
fn a_one_at_a_time_caller_grows_beside_the_model_that_holds_every_core() {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cores < 2 {
        eprintln!("skipped: needs two cores for two CPU-bound workers");
        return;
    }
    let node = Node::start();
    // The model takes a runner per core; a lone call waits a second for a
    // second call to share its batch.
    node.deploy(slow_batching_digits().path());
    let caller = FnDir::python(
        "one-at-a-time",
        "models = [\"digits\"]\n[scale]\nmax = 2\n",
        "import numpy as np\nimport sedge\n\ndef handle(req):\n    \
         out = sedge.infer(\"digits\", np.zeros((1, 64), dtype=np.float32))\n    return str(int(out[\"label\"][0]))\n",
    );
    node.deploy(caller.path());
    std::thread::scope(|s| {
        let calls: Vec<_> = (0..2).map(|_| s.spawn(|| node.post("/function/one-at-a-time", b""))).collect();
        for c in calls {
            let a = c.join().expect("a caller thread");
            assert_eq!(a.status, 200, "{}", a.text());
        }
    });
    // Its workers are CPU-bound (concurrency 1, calls a model), but the
    // cores the model holds run their own inference: the second call got a
    // worker of its own instead of waiting on the CPU budget.
    let described = node.describe("one-at-a-time");
    assert_eq!(described["sedge"]["cpuBudgetWaits"], 0, "{described}");
    assert_eq!(described["availableReplicas"], 2, "{described}");
}
