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
use sedge_onnx::{Model, Served};
use tokio::time::Instant;

use crate::engine::{BoxFuture, Engine, StartContext, Worker};

/// Loads and serves ONNX models.
pub struct OnnxEngine {
    /// The node's Python, whose onnxruntime package holds the library.
    python: String,
    cores: Cores,
}

impl OnnxEngine {
    pub fn new(python: String) -> Self {
        Self { python, cores: Cores::of_machine() }
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
            let (plan, held) = cores.reserve(model_spec.instances, model_spec.threads);
            let path = bundle.join(&spec.handler);
            let load = tokio::task::spawn_blocking(move || Model::load(&path, &python, plan.instances, plan.threads));
            let model = load.await.map_err(|e| format!("loading the model: {e}"))?.map_err(|e| e.to_string())?;
            let describe = |t: &[sedge_onnx::tensor::TensorInfo]| {
                t.iter()
                    .map(|i| format!("{} {} {}", i.name, i.dtype.name(), i.shape_text()))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            ctx.log.line(format!(
                "loaded {}: {} session(s) × {} thread(s); inputs {}; outputs {}",
                spec.handler,
                plan.instances,
                plan.threads,
                describe(&model.inputs),
                describe(&model.outputs)
            ));
            let queue = usize::try_from(spec.limits.queue).unwrap_or(usize::MAX).max(1);
            let served = Served::start(spec.name.as_str(), model, model_spec, labels.as_deref(), queue)
                .map_err(|e| e.to_string())?;
            served.warm().await.map_err(|e| e.to_string())?;
            Ok(Arc::new(OnnxWorker { served, alive: AtomicBool::new(true), _cores: held }) as Arc<dyn Worker>)
        })
    }
}

struct OnnxWorker {
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

    fn kill(&self) {
        self.alive.store(false, Ordering::Release);
    }

    /// A late call is dropped from the model's queue or its run's answer
    /// discarded; the model serves the others on.
    fn timed_out(&self) {}

    fn stop(self: Arc<Self>) {
        self.alive.store(false, Ordering::Release);
    }
}
