//! What a cluster shares besides functions: secrets and invoke tokens
//! (the `sedge-secrets` bucket), and models called over the Open Inference
//! Protocol or by `sedge.infer` from nodes that do not run them. Real
//! nats-server and real nodes on loopback, as in `cluster.rs`; skipped
//! where nats-server is not installed.

use std::time::Duration;

use crate::cluster::{node, placement, single, wait_nodes};
use crate::support::FnDir;

const JSON: [(&str, &str); 1] = [("content-type", "application/json")];

/// Reads secret `db-password` from the function's secrets folder at each call.
const READ_SECRET: &str = r#"import os

def handle(req):
    with open(os.path.join(os.environ['SEDGE_SECRETS_DIR'], 'db-password')) as f:
        return f.read()
"#;

#[test]
fn secrets_and_tokens_made_on_one_node_serve_on_another() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let Some(nats) = single(tmp.path(), "secrets_and_tokens_made_on_one_node") else { return };
    let url = nats.url();
    let a = node(tmp.path(), &url, "a", "front", "pw-secrets", "1");
    let b = node(tmp.path(), &url, "b", "worker", "pw-secrets", "1");
    wait_nodes(&a, 2);

    // Made on a, which will not run the function.
    let r = a.request("POST", "/system/secrets", &JSON, br#"{"name": "db-password", "value": "hunter2"}"#);
    assert_eq!(r.status, 201, "{}", r.text());
    let r = b.request("POST", "/system/secrets", &JSON, br#"{"name": "db-password", "value": "again"}"#);
    assert_eq!(r.status, 409, "the cluster already has it: {}", r.text());
    let listed = b.get("/system/secrets").json();
    assert_eq!(listed, serde_json::json!([{"name": "db-password", "namespace": "openfaas-fn"}]));

    // A deploy naming a secret the cluster lacks is refused where it arrives.
    let needy = FnDir::python("needy", "secrets = [\"absent\"]\n", "def handle(req):\n    return 'x'\n");
    let (_, archive) = sedge_store::pack::pack(needy.path()).expect("pack");
    let r = a.request("PUT", "/system/bundles/needy?wait=true", &[], &archive);
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.error().contains("secret absent"), "{}", r.error());

    // Placed on b only, deployed through a.
    let vault = FnDir::python(
        "vault",
        "secrets = [\"db-password\"]\n[auth]\ninvoke = true\n[placement]\nlabels = [\"worker\"]\n",
        READ_SECRET,
    );
    a.deploy(vault.path());
    let p = placement(&a);
    assert_eq!(
        p.iter().filter(|(_, f)| f.contains(&"vault".to_owned())).map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        ["b"],
        "{p:?}"
    );
    let token = b.describe("vault")["sedge"]["auth"]["token"].as_str().expect("a token on b").to_owned();
    let bearer = format!("Bearer {token}");
    for n in [&a, &b] {
        let r = n.request_raw("POST", "/function/vault", &[("authorization", &bearer)], b"");
        assert_eq!((r.status, r.text().as_str()), (200, "hunter2"), "via {}", n.url);
        assert_eq!(n.request_raw("POST", "/function/vault", &[], b"").status, 401, "via {}", n.url);
    }

    // An update made on a reaches the running function on b.
    let r = a.request("PUT", "/system/secrets", &JSON, br#"{"name": "db-password", "value": "changed"}"#);
    assert_eq!(r.status, 200, "{}", r.text());
    b.wait_for("the new value on b", Duration::from_secs(10), |b| {
        b.request_raw("POST", "/function/vault", &[("authorization", &bearer)], b"").text() == "changed"
    });
    let r = b.request("PUT", "/system/secrets", &JSON, br#"{"name": "missing", "value": "x"}"#);
    assert_eq!(r.status, 404, "{}", r.text());

    // A token rotated on a: the old one is refused on b, the new one accepted.
    let out = a.cli(&["rotate-token", "vault"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rotated = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert_ne!(rotated, token);
    let new_bearer = format!("Bearer {rotated}");
    b.wait_for("the rotated token on b", Duration::from_secs(10), |b| {
        b.request_raw("POST", "/function/vault", &[("authorization", &new_bearer)], b"").status == 200
    });
    for n in [&a, &b] {
        assert_eq!(n.request_raw("POST", "/function/vault", &[("authorization", &bearer)], b"").status, 401);
        let r = n.request_raw("POST", "/function/vault", &[("authorization", &new_bearer)], b"");
        assert_eq!((r.status, r.text().as_str()), (200, "changed"), "via {}", n.url);
    }

    // In use anywhere in the cluster: not removable from any node.
    for n in [&a, &b] {
        let r = n.request("DELETE", "/system/secrets", &JSON, br#"{"name": "db-password"}"#);
        assert_eq!(r.status, 409, "{}", r.text());
        assert!(r.error().contains("vault"), "{}", r.error());
    }

    // A node joining later, with an empty data directory, gets the secret
    // and the token, and runs the function with them.
    let c = node(tmp.path(), &url, "c", "worker", "pw-secrets", "1");
    c.wait_for("vault on c", Duration::from_secs(30), |c| {
        placement(c).get("c").is_some_and(|f| f.contains(&"vault".to_owned()))
    });
    assert_eq!(std::fs::read_to_string(c.data.join("secrets/values/db-password")).expect("value on c"), "changed");
    let r = c.request_raw("POST", "/function/vault", &[("authorization", &new_bearer)], b"");
    assert_eq!((r.status, r.text().as_str()), (200, "changed"));
    assert_eq!(c.request_raw("POST", "/function/vault", &[("authorization", &bearer)], b"").status, 401);

    // Once no function names it, removed on one node it goes from all.
    let r = b.request("DELETE", "/system/functions", &JSON, br#"{"functionName": "vault"}"#);
    assert_eq!(r.status, 200, "{}", r.text());
    let r = c.request("DELETE", "/system/secrets", &JSON, br#"{"name": "db-password"}"#);
    assert_eq!(r.status, 200, "{}", r.text());
    for n in [&a, &b, &c] {
        n.wait_for("the secret gone", Duration::from_secs(10), |n| !n.data.join("secrets/values/db-password").exists());
        assert_eq!(n.get("/system/secrets").json(), serde_json::json!([]));
    }
}

#[test]
fn the_inference_protocol_reaches_a_model_on_another_node() {
    use serde_json::json;
    let tmp = tempfile::tempdir().expect("tempdir");
    let Some(nats) = single(tmp.path(), "the_inference_protocol_reaches_a_model_on_another_node") else { return };
    let url = nats.url();
    let a = node(tmp.path(), &url, "a", "front", "pw-oip", "1");
    let b = node(tmp.path(), &url, "b", "models", "pw-oip", "1");
    wait_nodes(&a, 2);
    a.deploy(crate::models::digits_dir("[placement]\nlabels = [\"models\"]\n").path());
    let p = placement(&a);
    assert_eq!(p.get("a").map(Vec::len), Some(0), "a does not run the model: {p:?}");

    // tritonclient against a, which forwards every model request to b:
    // JSON and binary tensors alike answer as b itself does.
    let sample = crate::support::repo_root().join("examples/functions/digits-python/sample.json");
    let seen = crate::oip::client(&a, &["digits", "digits", sample.to_str().expect("utf-8")]);
    assert_eq!((seen["model_ready"].clone(), seen["version_ready"].clone()), (json!(true), json!(true)));
    assert_eq!(seen["metadata"]["name"], "digits");
    assert_eq!(seen["metadata"]["inputs"], json!([{"name": "pixels", "datatype": "FP32", "shape": [-1, 64]}]));
    let want = crate::oip::through_the_function(&b);
    for (way, binary) in [("json", false), ("binary", true), ("default", true)] {
        let got = &seen[way]["outputs"];
        assert_eq!(got["label"]["data"], want["label"]["data"], "{way}: the labels");
        crate::oip::assert_close(&got["probabilities"]["data"], &want["probabilities"]["data"], way);
        assert_eq!(got["probabilities"]["binary"], json!(binary), "{way}: probabilities as binary data");
    }
    // Errors as a single node gives them.
    let wrong = &seen["wrong_shape"];
    assert_eq!(wrong["status"], "400", "{wrong}");
    assert!(wrong["message"].as_str().is_some_and(|m| m.contains("[N, 64]")), "{wrong}");
    assert!(seen["wrong_version"]["message"].as_str().is_some_and(|m| m.contains("no version \"2\"")), "{seen}");
    assert_eq!(seen["missing_ready"], false);
    assert_eq!(seen["missing_metadata"]["status"], "404");

    // Plain HTTP with the binary extension: the header length travels with the body.
    let row: Vec<u8> = crate::models::sample_digit().iter().flat_map(|x| (*x as f32).to_le_bytes()).collect();
    let head = json!({"inputs": [{"name": "pixels", "shape": [1, 64], "datatype": "FP32",
                                  "parameters": {"binary_data_size": row.len()}}],
                      "outputs": [{"name": "label", "parameters": {"binary_data": false}}]})
    .to_string();
    let mut body = head.clone().into_bytes();
    body.extend_from_slice(&row);
    let length = head.len().to_string();
    let r = a.request("POST", "/v2/models/digits/infer", &[("inference-header-content-length", &length)], &body);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["outputs"][0]["data"], json!([want["label"]["data"][0]]), "{}", r.text());
    // A function that is not a model is refused on the node asked.
    let hello = FnDir::python("hello", "[placement]\nlabels = [\"models\"]\n", "def handle(req):\n    return 'hi'\n");
    a.deploy(hello.path());
    let r = a.request("POST", "/v2/models/hello/infer", &JSON, b"{}");
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.error().contains("not a model function"), "{}", r.error());
}

#[test]
fn a_function_calls_a_model_that_runs_on_another_node() {
    use crate::infer::{label_over_http, sample_body, ERRORS, PYTHON_CALLER};
    let tmp = tempfile::tempdir().expect("tempdir");
    let Some(nats) = single(tmp.path(), "a_function_calls_a_model_that_runs_on_another_node") else { return };
    let url = nats.url();
    let a = node(tmp.path(), &url, "a", "front", "pw-infer", "1");
    let b = node(tmp.path(), &url, "b", "models", "pw-infer", "1");
    wait_nodes(&a, 2);
    let on = |labels: &str| format!("[placement]\nlabels = [\"{labels}\"]\n");
    a.deploy(crate::models::digits_dir(&on("models")).path());
    let plain = FnDir::python("plain", &on("models"), "def handle(req):\n    return 'plain'\n");
    a.deploy(plain.path());
    // The callers run on a, the model on b.
    let reader = FnDir::python("reader", &format!("models = [\"digits\"]\n{}", on("front")), PYTHON_CALLER);
    a.deploy(reader.path());
    let asker =
        FnDir::python("asker", &format!("models = [\"digits\", \"ghost\", \"plain\"]\n{}", on("front")), ERRORS);
    a.deploy(asker.path());
    let p = placement(&a);
    assert_eq!(p.get("a"), Some(&vec!["asker".to_owned(), "reader".to_owned()]), "{p:?}");

    let expected = label_over_http(&b);
    let r = a.post("/function/reader", &sample_body());
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!((v["label"].clone(), v["argmax"].clone()), (expected.into(), expected.into()), "{v}");
    assert_eq!(v["shape"], serde_json::json!([1, 10]), "{v}");
    assert_eq!(v["dtype"], "float32", "{v}");
    assert_eq!(v["same"], true, "named, unnamed and listed inputs agree: {v}");
    let served = crate::support::sample(&b.get("/metrics").text(), "sedge_cluster_served_total", &[]);
    assert!(served.is_some_and(|n| n >= 3.0), "b ran the model calls: {served:?}");

    // Errors inside the function, as on a single node.
    let r = a.post("/function/asker", b"");
    assert_eq!(r.status, 200, "{}", r.text());
    crate::infer::errors_as_expected(&r.json());
}

#[test]
fn a_picture_and_a_full_size_tensor_reach_efficientnet_on_another_node() {
    use std::io::Write;
    let (Some(dir), Some(cat)) =
        (crate::models::effnet_dir("effnet"), crate::models::model_file("samples/chelsea.png"))
    else {
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let Some(nats) = single(tmp.path(), "a_picture_and_a_full_size_tensor_reach_efficientnet") else { return };
    let url = nats.url();
    let a = node(tmp.path(), &url, "a", "front", "pw-effnet", "1");
    let b = node(tmp.path(), &url, "b", "models", "pw-effnet", "1");
    wait_nodes(&a, 2);
    let mut manifest =
        std::fs::OpenOptions::new().append(true).open(dir.path().join("sedge.toml")).expect("the manifest");
    manifest.write_all(b"[placement]\nlabels = [\"models\"]\n").expect("placement");
    a.deploy(dir.path());
    let caller = FnDir::python(
        "cats",
        "models = [\"effnet\"]\n[limits]\nmax_body = \"8MiB\"\n[placement]\nlabels = [\"front\"]\n",
        crate::infer::EFFNET_CALLER,
    );
    a.deploy(caller.path());
    let p = placement(&a);
    assert_eq!((p.get("a").cloned(), p.get("b").cloned()), (Some(vec!["cats".into()]), Some(vec!["effnet".into()])));
    // The picture as a POST, the 602 KB tensor as binary data, both to b.
    let r = a.post("/function/cats", &std::fs::read(cat).expect("png"));
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["best"], 282, "{v}");
    assert!(v["label"].as_str().is_some_and(|l| !l.is_empty()), "{v}");
    assert_eq!(v["logits"], serde_json::json!([1, 1000]), "{v}");
    // Not a picture: the model's refusal reaches the function as its error.
    let r = a.post("/function/cats", b"not a picture");
    assert_eq!(r.status, 500, "{}", r.text());
    assert!(r.text().contains("model effnet refused the request (400)"), "{}", r.text());
    drop(b);
}

#[test]
fn a_single_node_joining_a_cluster_brings_its_secrets_and_tokens() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let Some(nats) = single(tmp.path(), "a_single_node_joining_a_cluster_brings_its_secrets") else { return };
    let url = nats.url();
    let data = tmp.path().join("data-solo");
    let solo = crate::support::Node::start_with_password(&data, &["--no-sandbox"], "pw-join");
    let r = solo.request("POST", "/system/secrets", &JSON, br#"{"name": "db-password", "value": "mine"}"#);
    assert_eq!(r.status, 201, "{}", r.text());
    let vault = FnDir::python("vault", "secrets = [\"db-password\"]\n[auth]\ninvoke = true\n", READ_SECRET);
    solo.deploy(vault.path());
    let token = solo.describe("vault")["sedge"]["auth"]["token"].as_str().expect("a token").to_owned();
    assert!(solo.terminate().success());

    // The same data directory joins a cluster: what it had, the cluster now has.
    let a = crate::cluster::node_on(&data, &url, "a", "", "pw-join", "1");
    let b = node(tmp.path(), &url, "b", "", "pw-join", "1");
    wait_nodes(&a, 2);
    assert_eq!(
        b.get("/system/secrets").json(),
        serde_json::json!([{"name": "db-password", "namespace": "openfaas-fn"}])
    );
    // Deployed to the cluster, the function keeps the token its callers hold.
    b.deploy(vault.path());
    let bearer = format!("Bearer {token}");
    for n in [&a, &b] {
        n.wait_for("vault serving", Duration::from_secs(20), |n| {
            n.request_raw("POST", "/function/vault", &[("authorization", &bearer)], b"").status == 200
        });
        let r = n.request_raw("POST", "/function/vault", &[("authorization", &bearer)], b"");
        assert_eq!((r.status, r.text().as_str()), (200, "mine"), "via {}", n.url);
    }
}
