//! `onnx` functions: the model file a function names, loaded in the node
//! itself (`sedge-onnx`), one loaded model serving every caller: HTTP,
//! the inference protocol (paths under `/v2/`) and functions calling it. A worker is
//! a loaded model: starting one loads it and runs it once (so `--wait`
//! returns after a real run); stopping it (idle, scale to zero, redeploy)
//! unloads it and gives its cores back.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use sedge_core::model::ModelSpec;
use sedge_core::{Invocation, InvokeError, Reply};
use sedge_onnx::cores::{Cores, Held};
use sedge_onnx::serve::RunError;
use sedge_onnx::tensor::{self, DType, Data, Tensor};
use sedge_onnx::{Model, Served};
use tokio::time::Instant;

use crate::engine::{BoxFuture, Engine, RawTensor, StartContext, StartKind, StartPhases, Worker};

/// Loads and serves ONNX models.
pub struct OnnxEngine {
    /// The node's Python, whose onnxruntime package holds the library.
    python: String,
    cores: Cores,
}

impl OnnxEngine {
    /// `cores` are the node's (`crate::budget`), shared with CPU-bound workers.
    pub fn new(python: String, cores: Cores) -> Self {
        Self { python, cores }
    }
}

fn default_spec() -> ModelSpec {
    ModelSpec {
        input: sedge_core::model::ModelInput::Tensor,
        labels: None,
        output: sedge_core::model::OutputSpec { softmax: false, top_k: 5 },
        batching: None,
        instances: None,
        threads: None,
    }
}

impl Engine for OnnxEngine {
    fn start(&self, ctx: StartContext) -> BoxFuture<'static, Result<Arc<dyn Worker>, String>> {
        let (python, cores) = (self.python.clone(), self.cores.clone());
        Box::pin(async move {
            let began = Instant::now();
            let spec = ctx.version.spec.clone();
            let bundle = ctx.version.files.bundle.clone();
            let model_spec = spec.model.clone().unwrap_or_else(default_spec);
            let labels = match &model_spec.labels {
                Some(file) => Some(
                    std::fs::read_to_string(bundle.join(file))
                        .map_err(|e| format!("model.labels: cannot read {file} in the function's folder: {e}"))?,
                ),
                None => None,
            };
            let (plan, held) = cores.reserve(spec.name.as_str(), model_spec.instances, model_spec.threads);
            let path = bundle.join(&spec.handler);
            let before_load = began.elapsed();
            let load = tokio::task::spawn_blocking(move || Model::load(&path, &python, plan.instances, plan.threads));
            let model = load.await.map_err(|e| format!("loading the model: {e}"))?.map_err(|e| e.to_string())?;
            let describe = |t: &[sedge_onnx::tensor::TensorInfo]| {
                t.iter()
                    .map(|i| format!("{} {} {}", i.name, i.dtype.name(), i.shape_text()))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            ctx.log.line(format!(
                "loaded {}: one session run by {} runner(s) × {} thread(s); inputs {}; outputs {}",
                spec.handler,
                plan.instances,
                plan.threads,
                describe(&model.inputs),
                describe(&model.outputs)
            ));
            let queue = usize::try_from(spec.limits.queue).unwrap_or(usize::MAX).max(1);
            let served = Served::start(spec.name.as_str(), model, model_spec, labels.as_deref(), queue)
                .map_err(|e| e.to_string())?
                .with_timeout(spec.limits.timeout);
            served.warm().await.map_err(|e| e.to_string())?;
            served.count_into(ctx.version.counters.model.clone());
            // Loading counts its warm-up run: the model is not ready before it.
            let phases = StartPhases {
                kind: StartKind::Model,
                process: before_load,
                imports: std::time::Duration::ZERO,
                model: began.elapsed().saturating_sub(before_load),
            };
            Ok(Arc::new(OnnxWorker {
                phases,
                function: spec.name.to_string(),
                served,
                alive: AtomicBool::new(true),
                _cores: held,
            }) as Arc<dyn Worker>)
        })
    }
}

struct OnnxWorker {
    phases: StartPhases,
    function: String,
    served: Served,
    alive: AtomicBool,
    /// Given back when the model is unloaded.
    _cores: Held,
}

impl Worker for OnnxWorker {
    fn call<'a>(&'a self, inv: &'a Invocation, deadline: Instant) -> BoxFuture<'a, Result<Reply, InvokeError>> {
        Box::pin(self.served.answer(inv, deadline))
    }

    fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }

    fn start_phases(&self) -> Option<StartPhases> {
        Some(self.phases)
    }

    fn kill(&self) {
        self.alive.store(false, Ordering::Release);
    }

    /// A late call is dropped from the model's queue or its run's answer
    /// discarded; the model serves the others on.
    fn timed_out(&self) {}

    fn stop(self: Arc<Self>) {
        self.alive.store(false, Ordering::Release);
    }

    fn infer<'a>(
        &'a self,
        inputs: Vec<RawTensor>,
        deadline: Instant,
    ) -> BoxFuture<'a, Result<Vec<RawTensor>, InvokeError>> {
        Box::pin(async move {
            let failed = |message: String| InvokeError::Failed { function: self.function.clone(), message };
            // Made into tensors on the session's thread, not this one.
            let model = self.served.shared_model();
            let inputs = Box::new(move || tensors_in(inputs, &model));
            match self.served.infer_with(inputs, deadline).await {
                Ok(outputs) => Ok(outputs.into_iter().map(tensor_out).collect()),
                Err(RunError::Full(limit)) => Err(InvokeError::QueueFull {
                    function: self.function.clone(),
                    limit: u32::try_from(limit).unwrap_or(u32::MAX),
                }),
                Err(RunError::Late) => Err(InvokeError::Timeout {
                    function: self.function.clone(),
                    timeout_ms: deadline.saturating_duration_since(Instant::now()).as_millis() as u64,
                }),
                Err(RunError::Invalid(m) | RunError::Failed(m)) => Err(failed(m)),
                Err(RunError::Stopped) => Err(InvokeError::ShuttingDown(self.function.clone())),
            }
        })
    }
}

/// A caller's raw tensors as the model's inputs, checked against what it
/// declares; a nameless one is the model's only input.
fn tensors_in(raw: Vec<RawTensor>, model: &Model) -> Result<Vec<Tensor>, String> {
    let mut inputs = Vec::with_capacity(raw.len());
    for t in raw {
        let name = match (t.name.is_empty(), model.inputs.as_slice()) {
            (false, _) => t.name,
            (true, [only]) => only.name.clone(),
            (true, all) => {
                let names: Vec<&str> = all.iter().map(|i| i.name.as_str()).collect();
                return Err(format!("the model has {} inputs {names:?}: name each one", all.len()));
            }
        };
        let dtype = DType::parse(&t.datatype)
            .ok_or_else(|| format!("input {name:?}: datatype {} is not served here", t.datatype))?;
        let shape = t
            .shape
            .iter()
            .map(|d| usize::try_from(*d).map_err(|_| format!("input {name:?}: dimension {d} is too large")))
            .collect::<Result<Vec<_>, _>>()?;
        // The frame's bytes are lent to the run as they are when they can be.
        let data = Data::from_shared_le_bytes(dtype, t.data).map_err(|e| format!("input {name:?}: {e}"))?;
        inputs.push(Tensor::new(name, shape, data)?);
    }
    tensor::check_inputs(&inputs, &model.inputs)?;
    Ok(inputs)
}

fn tensor_out(t: Tensor) -> RawTensor {
    RawTensor {
        datatype: t.data.dtype().name().to_owned(),
        shape: t.shape.iter().map(|d| *d as u64).collect(),
        data: t.data.to_le_bytes().into(),
        name: t.name,
    }
}
