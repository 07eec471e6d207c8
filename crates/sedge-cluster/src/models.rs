//! Models called from functions (`sedge.infer`) that this node does not
//! run: sent to a node that runs them as forwarded calls, tensors as an
//! Open Inference Protocol infer request with binary data (pictures as a
//! plain POST, as the model's HTTP callers send them). The answer comes
//! back to the worker as a local model's would, and so do its errors.

use std::collections::HashMap;
use std::sync::{Mutex, Weak};

use bytes::{Bytes, BytesMut};
use sedge_core::{Invocation, Reply};
use sedge_onnx::oip::HEADER_LENGTH;
use sedge_onnx::serve::{INFER_PATH, METADATA_PATH};
use sedge_runtime::engine::{BoxFuture, RawTensor};
use sedge_runtime::models::{self, ModelError, ModelInput, ModelOutput, RemoteModels};
use serde_json::{json, Value};
use tokio::time::{Duration, Instant};

use crate::Cluster;

/// The cluster as the node's runtime sees it for models it does not run.
pub(crate) struct ClusterModels {
    cluster: Weak<Cluster>,
    /// The name of each model's only input, with the version (digest) it
    /// was read from: asked of the model once per version, not once per
    /// call sent with an unnamed input.
    inputs: Mutex<HashMap<String, (String, String)>>,
}

impl ClusterModels {
    pub(crate) fn new(cluster: Weak<Cluster>) -> Self {
        Self { cluster, inputs: Mutex::default() }
    }

    fn known_input(&self, model: &str, digest: &str) -> Option<String> {
        let inputs = self.inputs.lock().unwrap_or_else(|p| p.into_inner());
        inputs.get(model).filter(|(d, _)| d == digest).map(|(_, name)| name.clone())
    }
}

impl RemoteModels for ClusterModels {
    fn infer(
        &self,
        model: &str,
        input: ModelInput,
        deadline: Instant,
    ) -> BoxFuture<'_, Option<Result<ModelOutput, ModelError>>> {
        let model = model.to_owned();
        Box::pin(async move {
            let Some(cluster) = self.cluster.upgrade() else { return Some(Err(ModelError::Stopped)) };
            let spec = cluster.spec_of(&model)?;
            if !spec.runtime.serves_models() {
                return Some(Err(ModelError::NotAModel { model, runtime: spec.runtime.as_str() }));
            }
            Some(self.infer_elsewhere(&cluster, &model, input, deadline).await)
        })
    }
}

impl ClusterModels {
    async fn infer_elsewhere(
        &self,
        cluster: &Cluster,
        model: &str,
        input: ModelInput,
        deadline: Instant,
    ) -> Result<ModelOutput, ModelError> {
        let left = || deadline.saturating_duration_since(Instant::now());
        let mut tensors = match input {
            ModelInput::Image(body) => {
                let reply = cluster.send(model, models::image_call(body), left()).await?;
                return models::image_answer(model, reply);
            }
            ModelInput::Tensors(t) => t,
        };
        // A model's only input may be sent unnamed; the protocol names every one.
        if tensors.iter().any(|t| t.name.is_empty()) {
            let name = self.only_input_of(cluster, model, left()).await?;
            for t in tensors.iter_mut().filter(|t| t.name.is_empty()) {
                t.name.clone_from(&name);
            }
        }
        let (body, header) = infer_request(&tensors);
        let inv = call("POST", INFER_PATH, vec![(HEADER_LENGTH.to_owned(), header.to_string())], body);
        let reply = cluster.send(model, inv, left()).await?;
        if reply.status != 200 {
            // Perhaps named from a node still on another version: asked again next time.
            self.inputs.lock().unwrap_or_else(|p| p.into_inner()).remove(model);
            return Err(models::refused(model, &reply));
        }
        infer_answer(&reply).map(ModelOutput::Tensors).map_err(|message| refusal(model, 502, message))
    }

    /// The name of `model`'s only input: known for the version the cluster
    /// runs, or asked of the model's metadata.
    async fn only_input_of(&self, cluster: &Cluster, model: &str, within: Duration) -> Result<String, ModelError> {
        let digest =
            cluster.registry.read().unwrap_or_else(|p| p.into_inner()).get(model).map(|e| e.record.digest.clone());
        if let Some(name) = digest.as_deref().and_then(|d| self.known_input(model, d)) {
            return Ok(name);
        }
        let meta = cluster.send(model, call("GET", METADATA_PATH, vec![], Bytes::new()), within).await?;
        if meta.status != 200 {
            return Err(models::refused(model, &meta));
        }
        let name = only_input(&meta.body).map_err(|message| refusal(model, 400, message))?;
        if let Some(digest) = digest {
            self.inputs.lock().unwrap_or_else(|p| p.into_inner()).insert(model.to_owned(), (digest, name.clone()));
        }
        Ok(name)
    }
}

fn refusal(model: &str, status: u16, message: String) -> ModelError {
    ModelError::Refused { model: model.to_owned(), status, message }
}

fn call(method: &str, path: &str, headers: Vec<(String, String)>, body: Bytes) -> Invocation {
    Invocation { method: method.to_owned(), path: path.to_owned(), query: String::new(), headers, body }
}

/// An infer request of `inputs` as binary data, every output asked for as
/// binary data too; the body and its JSON part's length.
fn infer_request(inputs: &[RawTensor]) -> (Bytes, usize) {
    let list: Vec<Value> = inputs
        .iter()
        .map(|t| {
            json!({
                "name": t.name,
                "datatype": t.datatype,
                "shape": t.shape,
                "parameters": { "binary_data_size": t.data.len() },
            })
        })
        .collect();
    let head = json!({ "inputs": list, "parameters": { "binary_data_output": true } }).to_string();
    let mut body = BytesMut::with_capacity(head.len() + inputs.iter().map(|t| t.data.len()).sum::<usize>());
    body.extend_from_slice(head.as_bytes());
    for t in inputs {
        body.extend_from_slice(&t.data);
    }
    (body.freeze(), head.len())
}

/// The outputs of a binary infer answer.
fn infer_answer(reply: &Reply) -> Result<Vec<RawTensor>, String> {
    let header = reply
        .headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(HEADER_LENGTH))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok())
        .unwrap_or(reply.body.len());
    if header > reply.body.len() {
        return Err(format!("the model's answer says {header} bytes of header but has {}", reply.body.len()));
    }
    let head: Value = serde_json::from_slice(&reply.body[..header])
        .map_err(|e| format!("the model's answer is not the inference protocol's: {e}"))?;
    let mut rest = reply.body.slice(header..);
    let mut outputs = Vec::new();
    for out in head.get("outputs").and_then(Value::as_array).ok_or("the model's answer has no outputs")? {
        let name = out.get("name").and_then(Value::as_str).unwrap_or_default().to_owned();
        let datatype = out.get("datatype").and_then(Value::as_str).unwrap_or_default().to_owned();
        let shape: Vec<u64> = out
            .get("shape")
            .and_then(Value::as_array)
            .map(|dims| dims.iter().filter_map(Value::as_u64).collect())
            .unwrap_or_default();
        let size = out
            .pointer("/parameters/binary_data_size")
            .and_then(Value::as_u64)
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| format!("output {name:?} came without binary data"))?;
        if size > rest.len() {
            return Err(format!("output {name:?} says {size} bytes, {} remain", rest.len()));
        }
        let data = rest.split_to(size);
        outputs.push(RawTensor { name, datatype, shape, data });
    }
    Ok(outputs)
}

/// The name of a model's only input, from its metadata.
fn only_input(metadata: &[u8]) -> Result<String, String> {
    let v: Value = serde_json::from_slice(metadata).map_err(|e| format!("the model's metadata is not JSON: {e}"))?;
    let names: Vec<&str> = v
        .get("inputs")
        .and_then(Value::as_array)
        .map(|l| l.iter().filter_map(|i| i.get("name").and_then(Value::as_str)).collect())
        .unwrap_or_default();
    match names.as_slice() {
        [one] => Ok((*one).to_owned()),
        _ => Err(format!("the model has {} inputs ({}): name each input", names.len(), names.join(", "))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensor(name: &str, datatype: &str, shape: &[u64], data: &[u8]) -> RawTensor {
        RawTensor {
            name: name.into(),
            datatype: datatype.into(),
            shape: shape.to_vec(),
            data: Bytes::copy_from_slice(data),
        }
    }

    #[test]
    fn a_request_reads_back_through_the_protocols_own_parser() {
        let pixels: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0].iter().flat_map(|x| x.to_le_bytes()).collect();
        let (body, header) = infer_request(&[tensor("pixels", "FP32", &[2, 2], &pixels)]);
        let declared = vec![sedge_onnx::tensor::TensorInfo {
            name: "pixels".into(),
            dtype: sedge_onnx::tensor::DType::F32,
            shape: vec![-1, 2],
        }];
        let req = sedge_onnx::oip::parse_infer(&body, Some(header), &declared).expect("parses");
        assert_eq!(req.inputs[0].data, sedge_onnx::tensor::Data::F32(vec![1.0, 2.0, 3.0, 4.0]));
        assert!(req.binary_output);
        // The protocol's own answer to it comes back as the model's outputs.
        let out = sedge_onnx::tensor::Tensor::new("label", vec![2], sedge_onnx::tensor::Data::I64(vec![3, 8]))
            .expect("tensor");
        let (answer, len) = sedge_onnx::oip::encode_infer("digits", &req, vec![out]).expect("encodes");
        let reply = Reply {
            status: 200,
            headers: vec![("Inference-Header-Content-Length".into(), len.expect("binary").to_string())],
            body: answer.into(),
        };
        let outputs = infer_answer(&reply).expect("reads");
        let want: Vec<u8> = [3i64, 8].iter().flat_map(|x| x.to_le_bytes()).collect();
        assert_eq!(outputs, vec![tensor("label", "INT64", &[2], &want)]);
    }

    #[test]
    fn broken_answers_are_named_not_panicked_on() {
        let reply = |headers: Vec<(String, String)>, body: &'static [u8]| Reply {
            status: 200,
            headers,
            body: Bytes::from_static(body),
        };
        let long = vec![(HEADER_LENGTH.to_owned(), "99".to_owned())];
        assert!(infer_answer(&reply(long, b"{}")).expect_err("short").contains("99 bytes"));
        assert!(infer_answer(&reply(vec![], b"not json")).expect_err("json").contains("protocol"));
        let json_only = br#"{"outputs": [{"name": "label", "datatype": "INT64", "shape": [1], "data": [3]}]}"#;
        assert!(infer_answer(&reply(vec![], json_only)).expect_err("json data").contains("without binary data"));
        let over =
            br#"{"outputs": [{"name": "x", "datatype": "FP32", "shape": [1], "parameters": {"binary_data_size": 4}}]}"#;
        assert!(infer_answer(&reply(vec![], over)).expect_err("missing bytes").contains("4 bytes"));
    }

    #[test]
    fn an_input_name_is_known_for_the_version_it_was_read_from_only() {
        let models = ClusterModels::new(Weak::new());
        models.inputs.lock().expect("lock").insert("digits".into(), ("sha-1".into(), "pixels".into()));
        assert_eq!(models.known_input("digits", "sha-1").as_deref(), Some("pixels"));
        assert_eq!(models.known_input("digits", "sha-2"), None, "a new version is asked again");
        assert_eq!(models.known_input("other", "sha-1"), None);
    }

    #[test]
    fn the_only_input_is_named_from_the_metadata() {
        assert_eq!(only_input(br#"{"inputs": [{"name": "pixels"}]}"#), Ok("pixels".to_owned()));
        let two = only_input(br#"{"inputs": [{"name": "a"}, {"name": "b"}]}"#).expect_err("two");
        assert!(two.contains("2 inputs (a, b)"), "{two}");
    }
}
