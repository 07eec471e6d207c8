//! The Open Inference Protocol's (KServe v2) infer messages, with the
//! binary tensor data extension: a compact JSON header, then each binary
//! tensor's raw little-endian bytes in order, the header's length given by
//! `Inference-Header-Content-Length`. Pure: bytes in, bytes out.

use serde_json::{json, Map, Value};

use crate::tensor::{self, DType, Data, Tensor, TensorInfo};

/// The header naming the JSON part's length in a binary message.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

/// A parsed infer request.
#[derive(Debug)]
pub struct InferRequest {
    pub id: Option<Value>,
    pub inputs: Vec<Tensor>,
    /// Outputs asked for by name, each with its own binary choice; `None`
    /// is every output.
    pub outputs: Option<Vec<(String, Option<bool>)>>,
    /// `parameters.binary_data_output`: outputs in binary unless they say.
    pub binary_output: bool,
}

/// Reads an infer request: `body` is JSON, or (with `header_len`) JSON
/// followed by the binary inputs. Element types must be the model's.
pub fn parse_infer(body: &[u8], header_len: Option<usize>, declared: &[TensorInfo]) -> Result<InferRequest, String> {
    let (head, mut rest) = match header_len {
        Some(n) if n <= body.len() => body.split_at(n),
        Some(n) => return Err(format!("{HEADER_LENGTH} is {n}, but the body has {} bytes", body.len())),
        None => (body, &[][..]),
    };
    let v: Value = serde_json::from_slice(head).map_err(|e| format!("the request header is not JSON: {e}"))?;
    let list = v.get("inputs").and_then(Value::as_array).ok_or("expected \"inputs\": a list of tensors")?;
    let mut inputs = Vec::with_capacity(list.len());
    for item in list {
        let name = item.get("name").and_then(Value::as_str).ok_or("each input needs a \"name\"")?;
        let datatype = item
            .get("datatype")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("input {name:?} needs a \"datatype\""))?;
        let dtype =
            DType::parse(datatype).ok_or_else(|| format!("input {name:?}: datatype {datatype} is not served here"))?;
        let shape = tensor::shape_of(item.get("shape").ok_or_else(|| format!("input {name:?} needs a \"shape\""))?)
            .map_err(|e| format!("input {name:?}: {e}"))?;
        let binary = item.pointer("/parameters/binary_data_size").and_then(Value::as_u64);
        let data = match binary {
            Some(size) => {
                let size = usize::try_from(size).map_err(|_| format!("input {name:?}: binary_data_size too large"))?;
                if size > rest.len() {
                    return Err(format!("input {name:?} says {size} bytes of binary data, {} remain", rest.len()));
                }
                let (mine, tail) = rest.split_at(size);
                rest = tail;
                Data::from_le_bytes(dtype, mine).map_err(|e| format!("input {name:?}: {e}"))?
            }
            None => {
                let one = json!({ "inputs": [{ "name": name, "shape": shape, "data": item.get("data").cloned().unwrap_or(Value::Null) }] });
                let as_declared: Vec<TensorInfo> = vec![TensorInfo { name: name.to_owned(), dtype, shape: vec![] }];
                tensor::from_json(&one, &as_declared)?.remove(0).data
            }
        };
        inputs.push(Tensor::new(name, shape, data)?);
    }
    if !rest.is_empty() {
        return Err(format!("{} bytes of binary data follow the last input", rest.len()));
    }
    tensor::check_inputs(&inputs, declared)?;
    let outputs = v.get("outputs").and_then(Value::as_array).map(|list| {
        list.iter()
            .filter_map(|o| {
                let name = o.get("name")?.as_str()?.to_owned();
                Some((name, o.pointer("/parameters/binary_data").and_then(Value::as_bool)))
            })
            .collect()
    });
    let binary_output = v.pointer("/parameters/binary_data_output").and_then(Value::as_bool).unwrap_or(false);
    Ok(InferRequest { id: v.get("id").cloned(), inputs, outputs, binary_output })
}

/// The answer to `req`: the body, and the JSON part's length when binary
/// data follows it (for `Inference-Header-Content-Length`).
pub fn encode_infer(model: &str, req: &InferRequest, outputs: Vec<Tensor>) -> Result<(Vec<u8>, Option<usize>), String> {
    let wanted: Vec<(Tensor, bool)> = match &req.outputs {
        None => outputs.into_iter().map(|t| (t, req.binary_output)).collect(),
        Some(names) => {
            let mut picked = Vec::with_capacity(names.len());
            let mut outputs = outputs;
            for (name, binary) in names {
                let at = outputs
                    .iter()
                    .position(|t| &t.name == name)
                    .ok_or_else(|| format!("the model has no output {name:?}"))?;
                picked.push((outputs.remove(at), binary.unwrap_or(req.binary_output)));
            }
            picked
        }
    };
    let mut tail = Vec::new();
    let mut list = Vec::with_capacity(wanted.len());
    for (t, binary) in &wanted {
        let mut entry = Map::new();
        entry.insert("name".into(), json!(t.name));
        entry.insert("datatype".into(), json!(t.data.dtype().name()));
        entry.insert("shape".into(), json!(t.shape));
        if *binary {
            let bytes = t.data.to_le_bytes();
            entry.insert("parameters".into(), json!({ "binary_data_size": bytes.len() }));
            tail.extend_from_slice(&bytes);
        } else {
            entry.insert("data".into(), serde_json::to_value(&t.data).map_err(|e| e.to_string())?);
        }
        list.push(Value::Object(entry));
    }
    let mut head = json!({ "model_name": model, "outputs": list });
    if let Some(id) = &req.id {
        head["id"] = id.clone();
    }
    let mut body = serde_json::to_vec(&head).map_err(|e| e.to_string())?;
    if wanted.iter().any(|(_, b)| *b) {
        let len = body.len();
        body.extend_from_slice(&tail);
        Ok((body, Some(len)))
    } else {
        Ok((body, None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn declared() -> Vec<TensorInfo> {
        vec![TensorInfo { name: "pixels".into(), dtype: DType::F32, shape: vec![-1, 2] }]
    }

    #[test]
    fn binary_inputs_follow_the_json_header() {
        let data: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0].iter().flat_map(|x| x.to_le_bytes()).collect();
        let head = json!({"inputs": [{"name": "pixels", "shape": [2, 2], "datatype": "FP32", "parameters": {"binary_data_size": 16}}],
                          "parameters": {"binary_data_output": true}})
        .to_string();
        let mut body = head.clone().into_bytes();
        body.extend_from_slice(&data);
        let req = parse_infer(&body, Some(head.len()), &declared()).expect("parse");
        assert_eq!(req.inputs[0].data, Data::F32(vec![1.0, 2.0, 3.0, 4.0]));
        assert!(req.binary_output);
        let out = Tensor::new("probabilities", vec![2], Data::F32(vec![0.25, 0.75])).expect("tensor");
        let (answer, json_len) = encode_infer("m", &req, vec![out]).expect("encode");
        let json_len = json_len.expect("binary answer");
        let head: Value = serde_json::from_slice(&answer[..json_len]).expect("head");
        assert_eq!(head["outputs"][0]["parameters"]["binary_data_size"], 8);
        assert_eq!(&answer[json_len..], &[0.25f32.to_le_bytes(), 0.75f32.to_le_bytes()].concat()[..]);
    }

    #[test]
    fn json_requests_get_json_answers_with_only_the_outputs_asked_for() {
        let body =
            json!({"id": "7", "inputs": [{"name": "pixels", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}],
                          "outputs": [{"name": "label"}]})
            .to_string();
        let req = parse_infer(body.as_bytes(), None, &declared()).expect("parse");
        let outs = vec![
            Tensor::new("label", vec![1], Data::I64(vec![3])).expect("t"),
            Tensor::new("probabilities", vec![1, 2], Data::F32(vec![0.5, 0.5])).expect("t"),
        ];
        let (answer, json_len) = encode_infer("m", &req, outs).expect("encode");
        assert_eq!(json_len, None);
        let v: Value = serde_json::from_slice(&answer).expect("json");
        assert_eq!(v["id"], "7");
        assert_eq!(v["outputs"].as_array().map(Vec::len), Some(1));
        assert_eq!(v["outputs"][0]["data"], json!([3]));
    }

    #[test]
    fn wrong_sizes_and_names_are_named() {
        let head = json!({"inputs": [{"name": "pixels", "shape": [1, 2], "datatype": "FP32", "parameters": {"binary_data_size": 8}}]}).to_string();
        let short = head.clone().into_bytes();
        assert!(parse_infer(&short, Some(head.len()), &declared()).expect_err("short").contains("8 bytes"));
        assert!(parse_infer(b"{}", Some(10), &declared()).expect_err("len").contains("has 2 bytes"));
        let bytes =
            json!({"inputs": [{"name": "pixels", "shape": [1, 2], "datatype": "BYTES", "data": ["a"]}]}).to_string();
        assert!(parse_infer(bytes.as_bytes(), None, &declared()).expect_err("bytes").contains("BYTES"));
        let wrong =
            json!({"inputs": [{"name": "pixels", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}).to_string();
        assert!(parse_infer(wrong.as_bytes(), None, &declared()).expect_err("shape").contains("[N, 2]"));
    }
}
