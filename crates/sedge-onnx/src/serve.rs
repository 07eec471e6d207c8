//! A model being served: requests are turned into tensors, queued, stacked
//! into batches by the [`crate::batch`] policy, run, and split back per
//! caller. Each runner of the model is a thread of its own that takes the
//! next batch from the queue itself the moment its run ends: under load a
//! run follows a run with no hand-off between threads, and an idle runner
//! is woken by the caller that queues a request. (A dispatcher task handing
//! each batch to a blocking thread put two thread wake-ups between runs.)

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use sedge_core::figures::ModelFigures;
use sedge_core::model::{ImagePrep, Layout, ModelInput, ModelSpec};
use sedge_core::{Invocation, InvokeError, Reply};
use serde_json::{json, Value};
use tokio::sync::oneshot;
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

/// Makes a caller's input tensors from what it sent (copying a body into
/// tensors, parsing JSON): run on the session's thread just before the
/// run, never on the node's async threads, and never for a caller that has
/// gone by then. An error is the caller's (400).
pub type Inputs = Box<dyn FnOnce() -> Result<Vec<Tensor>, String> + Send>;

type Answer = oneshot::Sender<Result<Vec<Tensor>, RunError>>;

/// One caller's request on its way to a run.
struct Job {
    inputs: Inputs,
    deadline: Instant,
    reply: Answer,
    /// When it entered the queue.
    queued: Instant,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunError {
    /// The queue of waiting requests is full.
    Full(usize),
    /// The caller's deadline passed before a session was free.
    Late,
    /// What the caller sent is not an input of this model.
    Invalid(String),
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
    image: Option<Arc<ImageInput>>,
    line: Arc<Line>,
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
            ModelInput::Image(p) => Some(Arc::new(image_input(&model.inputs, p)?)),
        };
        let policy = Policy {
            max_batch: batching.map_or(1, |b| b.max_batch as usize),
            max_delay: batching.map_or(Duration::ZERO, |b| b.max_delay),
            queue: queue.max(1),
        };
        let model = Arc::new(model);
        let line = Arc::new(Line {
            state: Mutex::new(LineState {
                queue: Queue::new(policy),
                limit: policy.queue,
                closed: false,
                running: 0,
                used: false,
                figures: Arc::default(),
            }),
            ready: Condvar::new(),
        });
        for instance in 0..model.instances() {
            let (model, line) = (model.clone(), line.clone());
            std::thread::Builder::new()
                .name(format!("model-run-{instance}"))
                .spawn(move || runner(&model, &line, instance))
                .map_err(|e| OnnxError::Load(format!("cannot start the model's runner thread: {e}")))?;
        }
        // Until told otherwise, sedge's default function timeout.
        let timeout = Duration::from_secs(30);
        Ok(Self { model, spec, labels, image, line, function: function.to_owned(), timeout })
    }

    /// The function's timeout, for the message when a caller's deadline passes.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Counts requests' queue waits and the runs from now on into
    /// `figures` (the function's, which outlive this load of its model),
    /// so a warm-up run before it is not counted.
    pub fn count_into(&self, figures: Arc<ModelFigures>) {
        self.line.lock().figures = figures;
    }

    pub fn model(&self) -> &Model {
        &self.model
    }

    /// Runs tensors through the model (the queue, batching and a session).
    pub async fn infer(&self, inputs: Vec<Tensor>, deadline: Instant) -> Result<Vec<Tensor>, RunError> {
        self.infer_with(Box::new(move || Ok(inputs)), deadline).await
    }

    /// [`Self::infer`] of tensors made by `inputs` on the session's thread.
    /// The caller's own deadline ends its wait (504); a request that was
    /// still queued is then left out by the runners, one already running
    /// has its answer discarded.
    pub async fn infer_with(&self, inputs: Inputs, deadline: Instant) -> Result<Vec<Tensor>, RunError> {
        let (reply, answer) = oneshot::channel();
        self.line.push(Job { inputs, deadline, reply, queued: Instant::now() })?;
        match tokio::time::timeout_at(deadline, answer).await {
            Ok(answered) => answered.unwrap_or(Err(RunError::Stopped)),
            Err(_) => Err(RunError::Late),
        }
    }

    /// The model, for work done on the session's thread.
    pub fn shared_model(&self) -> Arc<Model> {
        self.model.clone()
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
        let (model, body) = (self.shared_model(), inv.body.clone());
        let inputs: Inputs = if content_type == "application/octet-stream" {
            if let Err(e) = raw_shape(&self.model.inputs, body.len()) {
                return Ok(error_reply(400, &e));
            }
            Box::new(move || raw_tensor(&model.inputs, body).map(|t| vec![t]))
        } else if is_json {
            Box::new(move || {
                let body: Value = serde_json::from_slice(&body).map_err(|e| format!("the body is not JSON: {e}"))?;
                let t = tensor::from_json(&body, &model.inputs)?;
                tensor::check_inputs(&t, &model.inputs)?;
                Ok(t)
            })
        } else if let Some(image) = &self.image {
            // Decoded by the runner: the model's cores do the decoding too,
            // rather than threads beyond them competing with its runs.
            let image = image.clone();
            Box::new(move || {
                prep::image_tensor(&body, &image.prep, &image.input, image.sizes, image.layout).map(|t| vec![t])
            })
        } else {
            return Ok(error_reply(
                415,
                &format!(
                    "expected application/json with {{\"inputs\": ...}} (this model takes tensors), found {}",
                    if content_type.is_empty() { "no Content-Type" } else { &content_type }
                ),
            ));
        };
        let outputs = match self.infer_with(inputs, deadline).await {
            Ok(o) => o,
            Err(RunError::Invalid(e)) => return Ok(error_reply(400, &e)),
            Err(e) => return Err(self.run_error(e)),
        };
        if self.image.is_some() && !is_json {
            return Ok(json_reply(200, &self.classes(&outputs)));
        }
        #[derive(serde::Serialize)]
        struct Answer<'a> {
            model_name: &'a str,
            outputs: Vec<tensor::TensorJson<'a>>,
        }
        let answer = Answer { model_name: &self.function, outputs: outputs.iter().map(Tensor::as_json).collect() };
        let body = serde_json::to_vec(&answer).map_err(|e| self.failed(format!("encoding the outputs: {e}")))?;
        Ok(Reply {
            status: 200,
            headers: vec![("content-type".into(), "application/json".into())],
            body: Bytes::from(body),
        })
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
        // Parsed on the session's thread; what the answer needs of the
        // request comes back beside the inputs.
        let parsed = Arc::new(std::sync::Mutex::new(None));
        let (model, body, kept) = (self.shared_model(), inv.body.clone(), parsed.clone());
        let inputs: Inputs = Box::new(move || {
            let mut req = oip::parse_infer(&body, header_len, &model.inputs)?;
            // Checked before the run, so a misspelt output costs no inference.
            if let Some(unknown) =
                req.outputs.iter().flatten().find(|(name, _)| !model.outputs.iter().any(|o| &o.name == name))
            {
                let known: Vec<&str> = model.outputs.iter().map(|o| o.name.as_str()).collect();
                return Err(format!("the model has no output {:?}; its outputs are {}", unknown.0, known.join(", ")));
            }
            let inputs = std::mem::take(&mut req.inputs);
            *kept.lock().unwrap_or_else(|p| p.into_inner()) = Some(req);
            Ok(inputs)
        });
        let outputs = match self.infer_with(inputs, deadline).await {
            Ok(o) => o,
            Err(RunError::Invalid(e)) => return Ok(error_reply(400, &e)),
            Err(e) => return Err(self.run_error(e)),
        };
        let Some(req) = parsed.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return Err(self.failed("the request was run but not kept".to_owned()));
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
        let scores: Vec<f32> = match (&first.data, first.data.f32s()) {
            (_, Some(v)) => v.to_vec(),
            (tensor::Data::F64(v), _) => v.iter().map(|x| *x as f32).collect(),
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
            RunError::Invalid(m) | RunError::Failed(m) => self.failed(m),
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
/// The one input a raw body of `len` bytes fills, and its shape.
fn raw_shape(inputs: &[TensorInfo], len: usize) -> Result<(&TensorInfo, Vec<usize>), String> {
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
    let values = len / input.dtype.size();
    let rows = values / row;
    let fixed = usize::try_from(input.shape[0]).ok();
    if !len.is_multiple_of(input.dtype.size())
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
            len
        ));
    }
    let mut shape = vec![rows];
    shape.extend(input.shape[1..].iter().map(|d| usize::try_from(*d).unwrap_or(0)));
    Ok((input, shape))
}

/// A raw body as the model's one input (rows on the first axis), read in
/// place when it can be.
fn raw_tensor(inputs: &[TensorInfo], body: Bytes) -> Result<Tensor, String> {
    let (input, shape) = raw_shape(inputs, body.len())?;
    let data = tensor::Data::from_shared_le_bytes(input.dtype, body)?;
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

/// The queue of a served model, shared by its callers and its runners.
struct Line {
    state: Mutex<LineState>,
    /// Signalled when a request is queued or the model stops.
    ready: Condvar,
}

struct LineState {
    queue: Queue<Job>,
    limit: usize,
    /// The model is stopping: runners finish what is queued, then end.
    closed: bool,
    /// Runs under way.
    running: usize,
    /// The model has run since its arena last gave its memory back.
    used: bool,
    /// Where requests' waits and runs are counted.
    figures: Arc<ModelFigures>,
}

/// How long a model has nothing to do before its arena gives back the
/// memory its runs used (one run on zeros; a request arriving meanwhile
/// waits for it).
const RELEASE_AFTER: Duration = Duration::from_secs(2);

/// What a runner does next.
enum Next {
    Run(Vec<Job>, Arc<ModelFigures>),
    /// Nothing to do for [`RELEASE_AFTER`]: give the arena's memory back.
    Release,
    Stop,
}

impl Line {
    fn lock(&self) -> MutexGuard<'_, LineState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a request and wakes a runner; refuses at once what cannot
    /// be run (the queue full, the deadline passed, the model stopping).
    fn push(&self, job: Job) -> Result<(), RunError> {
        let now = Instant::now();
        if job.deadline <= now {
            return Err(RunError::Late);
        }
        let mut st = self.lock();
        if st.closed {
            return Err(RunError::Stopped);
        }
        // Callers that went away leave before they count against the limit.
        st.queue.forget(|job| job.reply.is_closed());
        let (deadline, limit) = (job.deadline, st.limit);
        st.queue.push(job, now, deadline).map_err(|_| RunError::Full(limit))?;
        drop(st);
        self.ready.notify_one();
        Ok(())
    }

    fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_all();
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.line.close();
    }
}

/// One runner: takes what the batching policy says to run next, runs it,
/// and comes back for more, until the model stops and its queue is empty.
/// The last runner to find the model quiet gives its arena's memory back.
fn runner(model: &Model, line: &Line, instance: usize) {
    let mut ran = false;
    loop {
        match next(line, ran) {
            Next::Run(batch, figures) => run_batch(model, instance, batch, &figures),
            Next::Release => {
                let zeros: Vec<Tensor> = model.inputs.iter().map(zeros).collect();
                if let Err(e) = model.run_releasing(instance, zeros) {
                    tracing::debug!("the model's arena was not released: {e}");
                }
            }
            Next::Stop => return,
        }
        ran = true;
    }
}

/// Waits for what to do next; `ran` when this runner has just ended a run.
fn next(line: &Line, ran: bool) -> Next {
    let mut st = line.lock();
    if ran {
        st.running -= 1;
    }
    loop {
        let now = Instant::now();
        for late in st.queue.expire(now) {
            let _ = late.reply.send(Err(RunError::Late));
        }
        // Callers that went away (a dropped call, a dead worker's) leave.
        st.queue.forget(|job| job.reply.is_closed());
        match st.queue.decide(now, 1) {
            Decision::Run(n) => {
                st.running += 1;
                st.used = true;
                let batch = st.queue.take(n);
                for job in &batch {
                    st.figures.queued.observe(now.saturating_duration_since(job.queued));
                }
                return Next::Run(batch, st.figures.clone());
            }
            Decision::WaitUntil(at) => {
                let wait = at.saturating_duration_since(now).max(Duration::from_micros(50));
                st = line.ready.wait_timeout(st, wait).unwrap_or_else(|p| p.into_inner()).0;
            }
            Decision::Idle if st.closed => return Next::Stop,
            Decision::Idle if st.used && st.running == 0 => {
                let (guard, waited) = line.ready.wait_timeout(st, RELEASE_AFTER).unwrap_or_else(|p| p.into_inner());
                st = guard;
                if waited.timed_out() && st.queue.is_empty() && st.used && st.running == 0 && !st.closed {
                    st.used = false;
                    st.running += 1;
                    return Next::Release;
                }
            }
            Decision::Idle => st = line.ready.wait(st).unwrap_or_else(|p| p.into_inner()),
        }
    }
}

/// Runs jobs as one batch (stacked on the first axis) and answers each;
/// callers that hung up meanwhile are skipped, and so is a caller whose
/// inputs turn out not to be the model's (told so).
fn run_batch(model: &Model, instance: usize, batch: Vec<Job>, figures: &ModelFigures) {
    // Timed around the engine only: inputs made, stacked and split apart
    // are the request's cost, not the run's.
    let run = |inputs: Vec<Tensor>, requests: usize| {
        let began = Instant::now();
        let outputs = model.run_owned(instance, inputs);
        figures.ran(requests, began.elapsed());
        outputs
    };
    let mut ready: Vec<(Vec<Tensor>, Answer)> = Vec::with_capacity(batch.len());
    for job in batch {
        if job.reply.is_closed() {
            continue;
        }
        match (job.inputs)() {
            Ok(inputs) => ready.push((inputs, job.reply)),
            Err(e) => {
                let _ = job.reply.send(Err(RunError::Invalid(e)));
            }
        }
    }
    if ready.len() == 1 {
        if let Some((inputs, reply)) = ready.pop() {
            let _ = reply.send(run(inputs, 1).map_err(RunError::Failed));
        }
        return;
    }
    if ready.is_empty() {
        return;
    }
    let mut stacked = Vec::with_capacity(model.inputs.len());
    for info in &model.inputs {
        let parts: Vec<&Tensor> = ready.iter().filter_map(|(i, _)| i.iter().find(|t| t.name == info.name)).collect();
        match Tensor::stack(&parts) {
            Some(t) if parts.len() == ready.len() => stacked.push(t),
            _ => {
                // Not stackable (shapes differ past the first axis): one by one.
                for (inputs, reply) in ready {
                    let _ = reply.send(run(inputs, 1).map_err(RunError::Failed));
                }
                return;
            }
        }
    }
    let rows: Vec<usize> =
        ready.iter().map(|(i, _)| i.first().and_then(|t| t.shape.first().copied()).unwrap_or(1)).collect();
    let replies: Vec<Answer> = ready.into_iter().map(|(_, r)| r).collect();
    match run(stacked, replies.len()) {
        Ok(outputs) => {
            let mut per_job: Vec<Vec<Tensor>> = replies.iter().map(|_| Vec::new()).collect();
            for out in outputs {
                match out.split(&rows) {
                    Some(parts) => parts.into_iter().zip(per_job.iter_mut()).for_each(|(p, v)| v.push(p)),
                    None => {
                        let e = format!("output {:?} does not have one row per input row", out.name);
                        for reply in replies {
                            let _ = reply.send(Err(RunError::Failed(e.clone())));
                        }
                        return;
                    }
                }
            }
            for (reply, outputs) in replies.into_iter().zip(per_job) {
                let _ = reply.send(Ok(outputs));
            }
        }
        Err(e) => {
            for reply in replies {
                let _ = reply.send(Err(RunError::Failed(e.clone())));
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
        let t = raw_tensor(&effnet(), Bytes::from(body.clone())).expect("one row");
        assert_eq!(t.shape, [1, 3, 2, 2]);
        let e = raw_tensor(&effnet(), Bytes::copy_from_slice(&body[..40])).expect_err("short");
        assert!(e.contains("[1, 3, 2, 2] (FP32, 48 bytes a row), the body has 40 bytes"), "{e}");
        let mut two = body.clone();
        two.extend_from_slice(&body);
        let two = Bytes::from(two);
        assert!(raw_tensor(&effnet(), two.clone()).is_err(), "a fixed batch of 1 takes one row");
        let dynamic = vec![TensorInfo { name: "x".into(), dtype: DType::F32, shape: vec![-1, 3, 2, 2] }];
        assert_eq!(raw_tensor(&dynamic, two).expect("two rows").shape, [2, 3, 2, 2]);
    }
}
