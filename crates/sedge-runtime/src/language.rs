//! The engine of the language runtimes (python, node): a long-lived
//! process running the language's shim ([`crate::process`]), taken from a
//! spare interpreter when one is waiting ([`crate::spares`]).

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};

use crate::engine::{BoxFuture, Engine, StartContext, Version, Worker};
use crate::models::Models;
use crate::process::{Launch, ProcessWorker, Ready, Spare, SpareTarget};
use crate::spares::Spares;
use crate::RuntimeConfig;

/// One language: its interpreter, its shim, its spares.
pub struct LanguageEngine {
    config: Arc<RuntimeConfig>,
    program: String,
    shim: PathBuf,
    spares: Arc<Spares>,
    /// The node's models, for functions that call them.
    models: OnceLock<Models>,
}

impl LanguageEngine {
    /// `language` names it in messages; `program` runs `shim`.
    pub fn new(config: Arc<RuntimeConfig>, language: &'static str, program: String, shim: PathBuf) -> Self {
        let spares = Spares::new(config.clone(), language, program.clone(), shim.clone());
        Self { config, program, shim, spares, models: OnceLock::new() }
    }
}

fn spare_target(version: &Version) -> SpareTarget {
    SpareTarget {
        limits: version.spec.limits.clone(),
        files: version.files.clone(),
        oom_kills: version.counters.oom_kills.clone(),
    }
}

impl Engine for LanguageEngine {
    fn start(&self, ctx: StartContext) -> BoxFuture<'static, Result<Arc<dyn Worker>, String>> {
        let (config, program, shim, spares) =
            (self.config.clone(), self.program.clone(), self.shim.clone(), self.spares.clone());
        let models = self.models.get().cloned();
        Box::pin(async move {
            let StartContext { version, log, ready_by, start_timeout, exited, .. } = ctx;
            let spec = &version.spec;
            let launch = Launch {
                program: &program,
                shim: &shim,
                files: &version.files,
                log,
                oom_kills: version.counters.oom_kills.clone(),
                config: &config,
                ready: Ready { by: ready_by, within: start_timeout },
                exited,
                models,
            };
            let spare = if Spare::suits(spec) { spares.take(&spare_target(&version)).await } else { None };
            let worker = match spare.and_then(|mut s| s.is_alive().then_some(s)) {
                Some(spare) => {
                    let worker = spare.assign(spec, launch).await?;
                    version.counters.spare_starts.fetch_add(1, Ordering::Relaxed);
                    worker
                }
                None => ProcessWorker::start(spec, launch).await?,
            };
            Ok(Arc::new(worker) as Arc<dyn Worker>)
        })
    }

    fn prepare(&self, version: &Version) {
        if Spare::suits(&version.spec) {
            self.spares.fill(&spare_target(version));
        }
    }

    fn retire(&self, bundle: &Path) {
        self.spares.forget(bundle);
    }

    fn close(&self) {
        self.spares.close();
    }

    fn attach(&self, models: Models) {
        let _ = self.models.set(models);
    }
}
