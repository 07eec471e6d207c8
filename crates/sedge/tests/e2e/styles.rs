//! Functions written for OpenFaaS, Kubeless, Fission and funcX run unchanged
//! through the real node: each style's call shape, answers and errors.

use crate::support::{example, manifest, FnDir, Node};

fn sample() -> Vec<u8> {
    std::fs::read(example("digits-python").join("sample.json")).expect("sample.json")
}

const JSON: (&str, &str) = ("content-type", "application/json");

#[test]
fn python_style_examples_classify_a_real_digit() {
    let node = Node::start();
    for name in ["openfaas-python", "kubeless-python", "fission-python", "funcx-python"] {
        node.deploy(&example(name));
    }
    for name in ["openfaas-python", "kubeless-python", "fission-python"] {
        let a = node.request("POST", &format!("/function/{name}"), &[JSON], &sample());
        assert_eq!(a.status, 200, "{name}: {}", a.text());
        assert_eq!(a.json()["digit"], 2, "{name}: {}", a.text());
    }
    let pixels: serde_json::Value = serde_json::from_slice(&sample()).expect("json");
    let call = serde_json::json!({ "args": [pixels["pixels"]] });
    let a = node.request("POST", "/function/funcx-python", &[JSON], call.to_string().as_bytes());
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.json()["result"]["digit"], 2, "{}", a.text());
}

#[test]
fn openfaas_python3_http_shape() {
    let node = Node::start();
    let code = r#"
def handle(event, context):
    if event.path == "/boom":
        raise RuntimeError("kaput")
    return {
        "statusCode": 202,
        "headers": {"X-Seen": event.headers.get("X-Tag", "")},
        "body": {"method": event.method, "q": event.query.get("q"), "len": len(event.body)},
    }
"#;
    let f = FnDir::new(&manifest("of", "python", "handler.handle", "style = \"openfaas\"\n"), &[("handler.py", code)]);
    node.deploy(f.path());
    let a = node.request("PUT", "/function/of/x?q=7", &[("X-Tag", "t")], b"abc");
    assert_eq!(a.status, 202, "{}", a.text());
    assert_eq!(a.header("x-seen"), Some("t"));
    assert_eq!(a.json(), serde_json::json!({"method": "PUT", "q": "7", "len": 3}));
    let boom = node.get("/function/of/boom");
    assert_eq!(boom.status, 500);
    assert!(boom.text().contains("Internal Server Error"), "{}", boom.text());
}

#[test]
fn kubeless_python_shape() {
    let node = Node::start();
    let code = r#"
def handler(event, context):
    if event["data"] == b"boom":
        raise ValueError("kaput")
    return {"data": event["data"], "function": context["function-name"], "type": event["event-type"],
            "q": event["extensions"]["request"].query.get("q")}
"#;
    let f = FnDir::new(&manifest("kb", "python", "func.handler", "style = \"kubeless\"\n"), &[("func.py", code)]);
    node.deploy(f.path());
    let a = node.request("POST", "/function/kb?q=1", &[JSON, ("event-type", "custom")], br#"{"n": 1}"#);
    assert_eq!(a.status, 200, "{}", a.text());
    let v = a.json();
    assert_eq!(v["data"], serde_json::json!({"n": 1}));
    assert_eq!((v["function"].as_str(), v["type"].as_str(), v["q"].as_str()), (Some("kb"), Some("custom"), Some("1")));
    let boom = node.post("/function/kb", b"boom");
    assert_eq!(boom.status, 500, "{}", boom.text());
}

#[test]
fn fission_python_shape_with_flask() {
    let node = Node::start();
    let code = r#"
from flask import request, jsonify

def main():
    if request.args.get("fail"):
        raise RuntimeError("kaput")
    body = request.get_json(silent=True)
    return jsonify(got=body, agent=request.headers.get("X-Agent"), method=request.method), 201, {"X-From": "fission"}
"#;
    let f = FnDir::new(&manifest("fi", "python", "main.main", "style = \"fission\"\n"), &[("main.py", code)]);
    node.deploy(f.path());
    let a = node.request("POST", "/function/fi", &[JSON, ("X-Agent", "e2e")], br#"{"k": [1, 2]}"#);
    assert_eq!(a.status, 201, "{}", a.text());
    assert_eq!(a.header("x-from"), Some("fission"));
    assert_eq!(a.json(), serde_json::json!({"got": {"k": [1, 2]}, "agent": "e2e", "method": "POST"}));
    assert_eq!(node.get("/function/fi?fail=1").status, 500);
}

#[test]
fn funcx_python_shape() {
    let node = Node::start();
    let code = "def scale(values, factor=1):\n    return [v * factor for v in values]\n\ndef boom():\n    raise KeyError('gone')\n";
    let f = FnDir::new(&manifest("fx", "python", "task.scale", "style = \"funcx\"\n"), &[("task.py", code)]);
    node.deploy(f.path());
    let a = node.request("POST", "/function/fx", &[JSON], br#"{"args": [[1, 2]], "kwargs": {"factor": 3}}"#);
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.json()["result"], serde_json::json!([3, 6]));
    let bad = node.post("/function/fx", b"not json");
    assert_eq!(bad.status, 400, "{}", bad.text());
    let g = FnDir::new(&manifest("fx2", "python", "task.boom", "style = \"funcx\"\n"), &[("task.py", code)]);
    node.deploy(g.path());
    let e = node.post("/function/fx2", b"");
    assert_eq!(e.status, 500, "{}", e.text());
    assert_eq!(e.json()["exception"], "KeyError");
}

#[test]
fn node_style_examples_classify_iris() {
    let node = Node::start();
    let cases = [
        ("openfaas-node", r#"{"features": [5.1, 3.5, 1.4, 0.2]}"#, "setosa"),
        ("kubeless-node", r#"{"features": [6.9, 3.2, 5.7, 2.3]}"#, "virginica"),
        ("fission-node", r#"{"features": [5.0, 2.0, 3.5, 1.0]}"#, "versicolor"),
    ];
    for (name, _, _) in cases {
        node.deploy(&example(name));
    }
    for (name, body, class) in cases {
        let a = node.request("POST", &format!("/function/{name}"), &[JSON], body.as_bytes());
        assert_eq!(a.status, 200, "{name}: {}", a.text());
        assert_eq!(a.json()["class"], class, "{name}: {}", a.text());
    }
}

#[test]
fn openfaas_node_template_shape() {
    let node = Node::start();
    let code = r#"
module.exports = async (event, context) => {
  if (event.path === '/fail') return context.status(418).fail('teapot');
  if (event.path === '/throw') throw new Error('kaput');
  return context
    .status(203)
    .headers({ 'Content-Type': 'application/json', 'X-Seen': event.headers['x-tag'] || '' })
    .succeed({ body: event.body, q: event.query.q, method: event.method });
};
"#;
    let f = FnDir::new(&manifest("ofn", "node", "handler.handle", "style = \"openfaas\"\n"), &[("handler.js", code)]);
    node.deploy(f.path());
    let a = node.request("POST", "/function/ofn/x?q=7", &[JSON, ("X-Tag", "t")], br#"{"n": 1}"#);
    assert_eq!(a.status, 203, "{}", a.text());
    assert_eq!(a.header("x-seen"), Some("t"));
    assert_eq!(a.json(), serde_json::json!({"body": {"n": 1}, "q": "7", "method": "POST"}));
    let fail = node.post("/function/ofn/fail", b"");
    assert_eq!((fail.status, fail.text().as_str()), (418, "teapot"));
    // The template answers a rejected promise with the status set so far.
    let thrown = node.post("/function/ofn/throw", b"");
    assert!(thrown.text().contains("kaput"), "{}", thrown.text());
}

#[test]
fn kubeless_and_fission_node_shapes() {
    let node = Node::start();
    let kb = r#"
module.exports = {
  handler: async (event, context) => {
    if (event.data === 'boom') throw new Error('kaput');
    return { data: event.data, fn: context['function-name'], type: event['event-type'] };
  },
};
"#;
    let f = FnDir::new(&manifest("kbn", "node", "handler.handler", "style = \"kubeless\"\n"), &[("handler.js", kb)]);
    node.deploy(f.path());
    let a = node.request("POST", "/function/kbn", &[JSON, ("event-type", "custom")], br#"{"n": 1}"#);
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.json(), serde_json::json!({"data": {"n": 1}, "fn": "kbn", "type": "custom"}));
    assert_eq!(node.request("POST", "/function/kbn", &[("content-type", "text/plain")], b"boom").status, 500);

    let fi = r#"
module.exports = async function (context) {
  const req = context.request;
  if (req.headers['x-fail']) throw new Error('kaput');
  return { status: 201, headers: { 'x-from': 'fission' }, body: { got: req.body, method: req.method } };
};
"#;
    let g = FnDir::new(&manifest("fin", "node", "fn.handle", "style = \"fission\"\n"), &[("fn.js", fi)]);
    node.deploy(g.path());
    let a = node.request("PUT", "/function/fin", &[JSON], br#"{"k": 2}"#);
    assert_eq!(a.status, 201, "{}", a.text());
    assert_eq!(a.header("x-from"), Some("fission"));
    assert_eq!(a.json(), serde_json::json!({"got": {"k": 2}, "method": "PUT"}));
    assert_eq!(node.request("POST", "/function/fin", &[("x-fail", "1")], b"").status, 500);

    let cb =
        "module.exports = function (context, callback) { callback(202, 'accepted ' + context.request.method, {}); };\n";
    let h = FnDir::new(&manifest("fcb", "node", "cb.handle", "style = \"fission\"\n"), &[("cb.js", cb)]);
    node.deploy(h.path());
    let a = node.get("/function/fcb");
    assert_eq!((a.status, a.text().as_str()), (202, "accepted GET"));
}

#[test]
fn a_node_module_that_is_its_own_handler_is_named_by_its_file() {
    let node = Node::start();
    let openfaas = FnDir::new(
        &manifest("of-node", "node", "handler.js", "style = \"openfaas\"\n"),
        &[("handler.js", "module.exports = async (event, context) => context.status(200).succeed('module itself');\n")],
    );
    node.deploy(openfaas.path());
    let a = node.post("/function/of-node", b"");
    assert_eq!((a.status, a.text().as_str()), (200, "module itself"));

    let bare = FnDir::new(
        &manifest("bare-node", "node", "hello", ""),
        &[("hello.js", "module.exports = async (req) => 'bare ' + req.text();\n")],
    );
    node.deploy(bare.path());
    assert_eq!(node.post("/function/bare-node", b"x").text(), "bare x");

    // A module whose exports are not a function says which export to name.
    let named = FnDir::new(
        &manifest("named-node", "node", "handler.js", ""),
        &[("handler.js", "exports.handle = async () => 'x';\n")],
    );
    let out = node.cli(&["deploy", "--wait", named.path().to_str().expect("utf-8")]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is not a function") && err.contains("handler.handle"), "{err}");
}
