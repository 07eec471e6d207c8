//! A model being served: requests are turned into tensors, queued, stacked
//! into batches by the [`crate::batch`] policy, run on a free session, and
//! split back per caller. One dispatcher task owns the queue; sessions run on
//! blocking threads, one batch each at a time.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sedge_core::model::{ImagePrep, Layout, ModelInput, ModelSpec};
use sedge_core::{Invocation, InvokeError, Reply};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::batch::{Decision, Policy, Queue};
use crate::model::Model;
use crate::tensor::{self, Tensor, TensorInfo};
use crate::{oip, prep, OnnxError};

/// The path inside a model function where the inference protocol's infer
/// requests arrive (the gateway's `/v2/models/NAME/infer` leads here).
pub const INFER_PATH: &str = "/v2/infer";
/// The path inside a model function that answers its metadata.
pub const METADATA_PATH: &str = "/v2/metadata";
/// The one version of a model a function serves.
pub const VERSION: &str = "1";

/// One caller's tensors on their way to a run.
struct Job {
    inputs: Vec<Tensor>,
    /// Rows it adds to a batch (its first dimension).
    rows: usize,
    deadline: Instant,
    reply: oneshot::Sender<Result<Vec<Tensor>, RunError>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunError {
    /// The queue of waiting requests is full.
    Full(usize),
    /// The caller's deadline passed before a session was free.
    Late,
    Failed(String),
    Stopped,
}

/// How a picture becomes the model's input.
struct ImageInput {
    prep: ImagePrep,
    input: String,
    sizes: (u32, u32),
    layout: Layout,
}

pub struct Served {
    model: Arc<Model>,
    spec: ModelSpec,
    labels: Option<Vec<String>>,
    image: Option<ImageInput>,
    jobs: mpsc::Sender<Job>,
    function: String,
    /// The function's timeout, named when a caller's deadline passes.
    timeout: Duration,
}

impl Served {
    /// Starts serving `model` as function `function` with `spec`; `labels`
    /// is the JSON text of the class names, when the manifest names a file.
    pub fn start(
        function: &str,
        model: Model,
        spec: ModelSpec,
        labels: Option<&str>,
        queue: usize,
    ) -> Result<Self, OnnxError> {
        let labels = labels
            .map(|text| {
                serde_json::from_str::<Vec<String>>(text)
                    .map_err(|e| OnnxError::Config(format!("model.labels: expected a JSON list of class names: {e}")))
            })
            .transpose()?;
        let batching = spec.batching.filter(|b| b.max_batch > 1);
        if batching.is_some() && !model.batches() {
            let shapes: Vec<String> = model.inputs.iter().map(|i| format!("{} {}", i.name, i.shape_text())).collect();
            return Err(OnnxError::Config(format!(
                "[batching] needs a model whose inputs and outputs have a batch dimension of any size; this one has {}: \
                 remove [batching], or export the model with a dynamic first dimension",
                shapes.join(", ")
            )));
        }
        let image = match &spec.input {
            ModelInput::Tensor => None,
            ModelInput::Image(p) => Some(image_input(&model.inputs, p)?),
        };
        let policy = Policy {
            max_batch: batching.map_or(1, |b| b.max_batch as usize),
            max_delay: batching.map_or(Duration::ZERO, |b| b.max_delay),
            queue: queue.max(1),
        };
        let model = Arc::new(model);
        let (jobs, rx) = mpsc::channel(64);
        tokio::spawn(dispatch(model.clone(), policy, rx));
        // Until told otherwise, sedge's default function timeout.
        let timeout = Duration::from_secs(30);
        Ok(Self { model, spec, labels, image, jobs, function: function.to_owned(), timeout })
    }

    /// The function's timeout, for the message when a caller's deadline passes.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn model(&self) -> &Model {
        &self.model
    }

    /// Runs tensors through the model (the queue, batching and a session).
    pub async fn infer(&self, inputs: Vec<Tensor>, deadline: Instant) -> Result<Vec<Tensor>, RunError> {
        let rows = inputs.first().and_then(|t| t.shape.first().copied()).unwrap_or(1);
        let (reply, answer) = oneshot::channel();
        self.jobs.send(Job { inputs, rows, deadline, reply }).await.map_err(|_| RunError::Stopped)?;
        answer.await.unwrap_or(Err(RunError::Stopped))
    }

    /// One run of inputs of the declared shapes (dynamic dimensions as 1),
    /// so the first request does not pay for ONNX Runtime's first run.
    pub async fn warm(&self) -> Result<(), OnnxError> {
        let inputs: Vec<Tensor> = self.model.inputs.iter().map(zeros).collect();
        let deadline = Instant::now() + Duration::from_secs(120);
        match self.infer(inputs, deadline).await {
            Ok(_) => Ok(()),
            Err(RunError::Failed(e)) => Err(OnnxError::Load(format!("the model failed its first run: {e}"))),
            Err(e) => Err(OnnxError::Load(format!("the model's first run did not happen: {e:?}"))),
        }
    }

    /// Answers one HTTP request to the function: the inference protocol's
    /// infer at [`INFER_PATH`], its model metadata on any GET, else this
    /// node's own JSON tensors or a picture.
    pub async fn answer(&self, inv: &Invocation, deadline: Instant) -> Result<Reply, InvokeError> {
        if inv.path == INFER_PATH {
            if inv.method != "POST" {
                return Ok(error_reply(405, &format!("{INFER_PATH} takes POST, not {}", inv.method)));
            }
            return self.answer_infer(inv, deadline).await;
        }
        if inv.method == "GET" {
            return Ok(json_reply(200, &self.metadata()));
        }
        let content_type = inv
            .headers
            .iter()
            .find(|(k, _)| k == "content-type")
            .map(|(_, v)| v.split(';').next().unwrap_or_default().trim().to_ascii_lowercase())
            .unwrap_or_default();
        let is_json =
            content_type == "application/json" || (content_type.is_empty() && inv.body.first() == Some(&b'{'));
        let inputs = if content_type == "application/octet-stream" {
            match raw_tensor(&self.model.inputs, &inv.body) {
                Ok(t) => vec![t],
                Err(e) => return Ok(error_reply(400, &e)),
            }
        } else if is_json {
            let body: Value = match serde_json::from_slice(&inv.body) {
                Ok(v) => v,
                Err(e) => return Ok(error_reply(400, &format!("the body is not JSON: {e}"))),
            };
            match tensor::from_json(&body, &self.model.inputs).and_then(|t| {
                tensor::check_inputs(&t, &self.model.inputs)?;
                Ok(t)
            }) {
                Ok(t) => t,
                Err(e) => return Ok(error_reply(400, &e)),
            }
        } else if let Some(image) = &self.image {
            let body = inv.body.clone();
            let (prep, input, sizes, layout) = (image.prep.clone(), image.input.clone(), image.sizes, image.layout);
            let made =
                tokio::task::spawn_blocking(move || prep::image_tensor(&body, &prep, &input, sizes, layout)).await;
            match made {
                Ok(Ok(t)) => vec![t],
                Ok(Err(e)) => return Ok(error_reply(400, &e)),
                Err(e) => return Err(self.failed(format!("decoding the image: {e}"))),
            }
        } else {
            return Ok(error_reply(
                415,
                &format!(
                    "expected application/json with {{\"inputs\": ...}} (this model takes tensors), found {}",
                    if content_type.is_empty() { "no Content-Type" } else { &content_type }
                ),
            ));
        };
        let outputs = match self.infer(inputs, deadline).await {
            Ok(o) => o,
            Err(e) => return Err(self.run_error(e)),
        };
        if self.image.is_some() && !is_json {
            return Ok(json_reply(200, &self.classes(&outputs)));
        }
        let list: Vec<Value> = outputs.iter().map(Tensor::to_json).collect();
        Ok(json_reply(200, &json!({ "model_name": self.function, "outputs": list })))
    }

    /// An inference protocol infer request: JSON, or a JSON header followed
    /// by binary tensors; the answer is binary when any output is.
    async fn answer_infer(&self, inv: &Invocation, deadline: Instant) -> Result<Reply, InvokeError> {
        if let Some(coding) = header(inv, "content-encoding").filter(|c| !c.trim().eq_ignore_ascii_case("identity")) {
            return Ok(error_reply(
                415,
                &format!("Content-Encoding {coding} is not taken here: send the infer request uncompressed"),
            ));
        }
        let header_len = match header(inv, oip::HEADER_LENGTH).map(|v| v.trim().parse::<usize>()) {
            None => None,
            Some(Ok(n)) => Some(n),
            Some(Err(_)) => {
                return Ok(error_reply(400, &format!("{} must be a number of bytes", oip::HEADER_LENGTH)));
            }
        };
        let mut req = match oip::parse_infer(&inv.body, header_len, &self.model.inputs) {
            Ok(r) => r,
            Err(e) => return Ok(error_reply(400, &e)),
        };
        // Checked before the run, so a misspelt output costs no inference.
        if let Some(unknown) =
            req.outputs.iter().flatten().find(|(name, _)| !self.model.outputs.iter().any(|o| &o.name == name))
        {
            let known: Vec<&str> = self.model.outputs.iter().map(|o| o.name.as_str()).collect();
            return Ok(error_reply(
                400,
                &format!("the model has no output {:?}; its outputs are {}", unknown.0, known.join(", ")),
            ));
        }
        let inputs = std::mem::take(&mut req.inputs);
        let outputs = match self.infer(inputs, deadline).await {
            Ok(o) => o,
            Err(e) => return Err(self.run_error(e)),
        };
        let (body, json_len) = oip::encode_infer(&self.function, &req, outputs).map_err(|e| self.failed(e))?;
        let headers = match json_len {
            Some(n) => vec![
                ("content-type".into(), "application/octet-stream".into()),
                (oip::HEADER_LENGTH.into(), n.to_string()),
            ],
            None => vec![("content-type".into(), "application/json".into())],
        };
        Ok(Reply { status: 200, headers, body: Bytes::from(body) })
    }

    /// The first output's best classes (of its first row).
    fn classes(&self, outputs: &[Tensor]) -> Value {
        let Some(first) = outputs.first() else { return json!([]) };
        let scores: Vec<f32> = match &first.data {
            tensor::Data::F32(v) => v.clone(),
            tensor::Data::F64(v) => v.iter().map(|x| *x as f32).collect(),
            _ => return json!([]),
        };
        let row = first.shape.last().copied().unwrap_or(scores.len()).min(scores.len());
        prep::top_classes(
            &scores[..row],
            self.labels.as_deref(),
            self.spec.output.top_k as usize,
            self.spec.output.softmax,
        )
    }

    /// What the model takes and gives, as the inference protocol describes a
    /// model (dimensions of any size as -1). A function has one version.
    pub fn metadata(&self) -> Value {
        let describe = |t: &TensorInfo| {
            let shape: Vec<i64> = t.shape.iter().map(|d| if *d < 0 { -1 } else { *d }).collect();
            json!({ "name": t.name, "datatype": t.dtype.name(), "shape": shape })
        };
        json!({
            "name": self.function,
            "versions": [VERSION],
            "platform": "onnxruntime_onnx",
            "inputs": self.model.inputs.iter().map(describe).collect::<Vec<_>>(),
            "outputs": self.model.outputs.iter().map(describe).collect::<Vec<_>>(),
        })
    }

    fn failed(&self, message: String) -> InvokeError {
        InvokeError::Failed { function: self.function.clone(), message }
    }

    fn run_error(&self, e: RunError) -> InvokeError {
        match e {
            RunError::Full(limit) => InvokeError::QueueFull {
                function: self.function.clone(),
                limit: u32::try_from(limit).unwrap_or(u32::MAX),
            },
            // The deadline has passed by now; the timeout it came from is what to name.
            RunError::Late => InvokeError::Timeout {
                function: self.function.clone(),
                timeout_ms: u64::try_from(self.timeout.as_millis()).unwrap_or(u64::MAX),
            },
            RunError::Failed(m) => self.failed(m),
            RunError::Stopped => InvokeError::ShuttingDown(self.function.clone()),
        }
    }
}

fn image_input(inputs: &[TensorInfo], prep: &ImagePrep) -> Result<ImageInput, OnnxError> {
    let [input] = inputs else {
        return Err(OnnxError::Config(format!(
            "model.input = \"image\" needs a model with one input; this one has {}",
            inputs.len()
        )));
    };
    let dims = &input.shape;
    let layout = match (prep.layout, dims.as_slice()) {
        (Some(l), [_, _, _, _]) => l,
        (None, [_, 3, _, _]) => Layout::Nchw,
        (None, [_, _, _, 3]) => Layout::Nhwc,
        _ => {
            return Err(OnnxError::Config(format!(
                "model.input = \"image\" needs an input of shape [N, 3, H, W] or [N, H, W, 3]; {} is {}",
                input.name,
                input.shape_text()
            )))
        }
    };
    let height = match layout {
        Layout::Nchw => dims[2],
        Layout::Nhwc => dims[1],
    };
    let sizes = prep.sizes(u32::try_from(height).ok());
    Ok(ImageInput { prep: prep.clone(), input: input.name.clone(), sizes, layout })
}

/// A body of raw little-endian elements for a model with one input whose
/// shape is fixed past the first dimension (`[N, 3, 224, 224]` takes any
/// multiple of 3 × 224 × 224 values): what a camera's gateway sends.
fn raw_tensor(inputs: &[TensorInfo], body: &[u8]) -> Result<Tensor, String> {
    let [input] = inputs else {
        return Err(format!(
            "a raw tensor body (application/octet-stream) needs a model with one input; this one has {}: send JSON",
            inputs.len()
        ));
    };
    let row: Option<usize> =
        input.shape.get(1..).and_then(|dims| dims.iter().map(|d| usize::try_from(*d).ok()).product());
    let Some(row) = row.filter(|r| *r > 0) else {
        return Err(format!(
            "input {:?} has shape {}: only the first dimension may vary in a raw body",
            input.name,
            input.shape_text()
        ));
    };
    let values = body.len() / input.dtype.size();
    let rows = values / row;
    let fixed = usize::try_from(input.shape[0]).ok();
    if !body.len().is_multiple_of(input.dtype.size())
        || rows == 0
        || !values.is_multiple_of(row)
        || fixed.is_some_and(|n| n != rows)
    {
        return Err(format!(
            "input {:?} must have shape {} ({}, {} bytes a row), the body has {} bytes",
            input.name,
            input.shape_text(),
            input.dtype.name(),
            row * input.dtype.size(),
            body.len()
        ));
    }
    let mut shape = vec![rows];
    shape.extend(input.shape[1..].iter().map(|d| usize::try_from(*d).unwrap_or(0)));
    let data = tensor::Data::from_le_bytes(input.dtype, body)?;
    Tensor::new(input.name.clone(), shape, data)
}

fn zeros(info: &TensorInfo) -> Tensor {
    let shape: Vec<usize> = info.shape.iter().map(|d| usize::try_from(*d).unwrap_or(1).max(1)).collect();
    let n = shape.iter().product();
    let data = match info.dtype {
        tensor::DType::F32 => tensor::Data::F32(vec![0.0; n]),
        tensor::DType::F64 => tensor::Data::F64(vec![0.0; n]),
        tensor::DType::I64 => tensor::Data::I64(vec![0; n]),
        tensor::DType::I32 => tensor::Data::I32(vec![0; n]),
        tensor::DType::U8 => tensor::Data::U8(vec![0; n]),
        tensor::DType::I8 => tensor::Data::I8(vec![0; n]),
        tensor::DType::Bool => tensor::Data::Bool(vec![false; n]),
    };
    Tensor { name: info.name.clone(), shape, data }
}

fn header<'a>(inv: &'a Invocation, name: &str) -> Option<&'a str> {
    inv.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

fn json_reply(status: u16, v: &Value) -> Reply {
    Reply {
        status,
        headers: vec![("content-type".into(), "application/json".into())],
        body: Bytes::from(v.to_string()),
    }
}

fn error_reply(status: u16, message: &str) -> Reply {
    json_reply(status, &json!({ "error": message }))
}

/// The dispatcher: applies the batching policy to the queue and hands
/// batches to free sessions until the jobs channel closes and all is done.
async fn dispatch(model: Arc<Model>, policy: Policy, mut jobs: mpsc::Receiver<Job>) {
    let mut queue: Queue<Job> = Queue::new(policy);
    let mut free: Vec<usize> = (0..model.instances()).collect();
    let (done_tx, mut done) = mpsc::unbounded_channel::<usize>();
    let mut open = true;
    loop {
        let now = Instant::now();
        for late in queue.expire(now) {
            let _ = late.reply.send(Err(RunError::Late));
        }
        // Callers that went away (a dropped call, a dead worker's) leave.
        queue.forget(|job| job.reply.is_closed());
        match queue.decide(now, free.len()) {
            Decision::Run(n) => {
                let Some(instance) = free.pop() else { continue };
                let batch = queue.take(n);
                let (model, done_tx) = (model.clone(), done_tx.clone());
                tokio::task::spawn_blocking(move || {
                    run_batch(&model, instance, batch);
                    let _ = done_tx.send(instance);
                });
                continue;
            }
            Decision::WaitUntil(at) => {
                tokio::select! {
                    job = jobs.recv(), if open => match job {
                        Some(job) => admit(&mut queue, job, policy.queue),
                        None => open = false,
                    },
                    Some(instance) = done.recv() => free.push(instance),
                    () = tokio::time::sleep_until(at) => {}
                }
            }
            Decision::Idle => {
                if !open && free.len() == model.instances() {
                    return;
                }
                tokio::select! {
                    job = jobs.recv(), if open => match job {
                        Some(job) => admit(&mut queue, job, policy.queue),
                        None => open = false,
                    },
                    Some(instance) = done.recv() => free.push(instance),
                }
            }
        }
    }
}

fn admit(queue: &mut Queue<Job>, job: Job, limit: usize) {
    let deadline = job.deadline;
    if let Err(job) = queue.push(job, Instant::now(), deadline) {
        let _ = job.reply.send(Err(RunError::Full(limit)));
    }
}

/// Runs jobs as one batch (stacked on the first axis) and answers each;
/// callers that hung up meanwhile are skipped.
fn run_batch(model: &Model, instance: usize, batch: Vec<Job>) {
    let batch: Vec<Job> = batch.into_iter().filter(|j| !j.reply.is_closed()).collect();
    if batch.is_empty() {
        return;
    }
    if batch.len() == 1 {
        if let Some(job) = batch.into_iter().next() {
            let result = model.run_owned(instance, job.inputs).map_err(RunError::Failed);
            let _ = job.reply.send(result);
        }
        return;
    }
    let mut stacked = Vec::with_capacity(model.inputs.len());
    for info in &model.inputs {
        let parts: Vec<&Tensor> = batch.iter().filter_map(|j| j.inputs.iter().find(|t| t.name == info.name)).collect();
        match Tensor::stack(&parts) {
            Some(t) if parts.len() == batch.len() => stacked.push(t),
            _ => {
                // Not stackable (shapes differ past the first axis): one by one.
                for job in batch {
                    let result = model.run_owned(instance, job.inputs).map_err(RunError::Failed);
                    let _ = job.reply.send(result);
                }
                return;
            }
        }
    }
    let rows: Vec<usize> = batch.iter().map(|j| j.rows).collect();
    match model.run_owned(instance, stacked) {
        Ok(outputs) => {
            let mut per_job: Vec<Vec<Tensor>> = batch.iter().map(|_| Vec::new()).collect();
            for out in outputs {
                match out.split(&rows) {
                    Some(parts) => parts.into_iter().zip(per_job.iter_mut()).for_each(|(p, v)| v.push(p)),
                    None => {
                        let e = format!("output {:?} does not have one row per input row", out.name);
                        for job in batch {
                            let _ = job.reply.send(Err(RunError::Failed(e.clone())));
                        }
                        return;
                    }
                }
            }
            for (job, outputs) in batch.into_iter().zip(per_job) {
                let _ = job.reply.send(Ok(outputs));
            }
        }
        Err(e) => {
            for job in batch {
                let _ = job.reply.send(Err(RunError::Failed(e.clone())));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::DType;

    fn effnet() -> Vec<TensorInfo> {
        vec![TensorInfo { name: "input".into(), dtype: DType::F32, shape: vec![1, 3, 2, 2] }]
    }

    #[test]
    fn a_raw_body_is_the_input_in_rows() {
        let body: Vec<u8> = (0..12).flat_map(|i| (i as f32).to_le_bytes()).collect();
        let t = raw_tensor(&effnet(), &body).expect("one row");
        assert_eq!(t.shape, [1, 3, 2, 2]);
        let e = raw_tensor(&effnet(), &body[..40]).expect_err("short");
        assert!(e.contains("[1, 3, 2, 2] (FP32, 48 bytes a row), the body has 40 bytes"), "{e}");
        let mut two = body.clone();
        two.extend_from_slice(&body);
        assert!(raw_tensor(&effnet(), &two).is_err(), "a fixed batch of 1 takes one row");
        let dynamic = vec![TensorInfo { name: "x".into(), dtype: DType::F32, shape: vec![-1, 3, 2, 2] }];
        assert_eq!(raw_tensor(&dynamic, &two).expect("two rows").shape, [2, 3, 2, 2]);
    }
}
