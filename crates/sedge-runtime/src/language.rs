//! The engine of the language runtimes (python, node): a long-lived
//! process running the language's shim ([`crate::process`]), taken from a
//! spare interpreter when one is waiting ([`crate::spares`]), or (Python)
//! forked from the function's zygote once it has one ([`crate::zygotes`]).

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};

use crate::engine::{BoxFuture, Engine, StartContext, Version, Worker};
use crate::models::Models;
use crate::process::zygote::ForkError;
use crate::process::{Launch, ProcessWorker, Ready, Spare, SpareTarget};
use crate::spares::Spares;
use crate::zygotes::Zygotes;
use crate::RuntimeConfig;

/// One language: its interpreter, its shim, its spares.
pub struct LanguageEngine {
    config: Arc<RuntimeConfig>,
    program: String,
    shim: PathBuf,
    spares: Arc<Spares>,
    /// Python's per-version zygotes, when the node forks workers.
    zygotes: Option<Arc<Zygotes>>,
    /// The node's models, for functions that call them.
    models: OnceLock<Models>,
}

impl LanguageEngine {
    /// `language` names it in messages; `program` runs `shim`.
    pub fn new(config: Arc<RuntimeConfig>, language: &'static str, program: String, shim: PathBuf) -> Self {
        let spares = Spares::new(config.clone(), language, program.clone(), shim.clone());
        let zygotes = (language == "python" && config.zygotes)
            .then(|| Zygotes::new(config.clone(), program.clone(), shim.clone()));
        Self { config, program, shim, spares, zygotes, models: OnceLock::new() }
    }
}

fn spare_target(version: &Version) -> SpareTarget {
    SpareTarget {
        function: version.spec.name.to_string(),
        preload: crate::budget::heavy_modules(&version.files.bundle),
        limits: version.spec.limits.clone(),
        files: version.files.clone(),
        oom_kills: version.counters.oom_kills.clone(),
    }
}

/// Asks for the next spare when dropped: after the start's zygote was
/// asked for (which ranks above a spare in the memory budget), or when the
/// start is abandoned at any await.
struct Refill<'a> {
    spares: &'a Arc<Spares>,
    target: &'a SpareTarget,
}

impl Drop for Refill<'_> {
    fn drop(&mut self) {
        self.spares.fill(self.target);
    }
}

impl Engine for LanguageEngine {
    fn start(&self, ctx: StartContext) -> BoxFuture<'static, Result<Arc<dyn Worker>, String>> {
        let (config, program, shim, spares) =
            (self.config.clone(), self.program.clone(), self.shim.clone(), self.spares.clone());
        let models = self.models.get().cloned();
        let zygotes = self.zygotes.clone();
        Box::pin(async move {
            let StartContext { version, log, ready_by, start_timeout, exited, instance } = ctx;
            let spec = &version.spec;
            let zygote_log = log.sibling(format!("{}-zygote", spec.name));
            let mut launch = Launch {
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
            if let Some(zygote) = zygotes.as_ref().and_then(|z| z.get(&version.files.bundle)) {
                match zygote.fork(spec, launch, &instance).await {
                    Ok(worker) => return Ok(Arc::new(worker) as Arc<dyn Worker>),
                    Err(ForkError::After(e)) => return Err(e),
                    Err(ForkError::Before(e, back)) => {
                        zygote_log.line(format!("forking a worker failed ({e}); starting one fresh"));
                        launch = back;
                    }
                }
            }
            let suits = Spare::suits(spec);
            let target = spare_target(&version);
            // A spare taken is replaced however this start ends, even when
            // the pool drops it past its start timeout.
            let _refill = suits.then(|| Refill { spares: &spares, target: &target });
            let spare = if suits { spares.take(&target).await } else { None };
            let worker = match spare.and_then(|mut s| s.is_alive().then_some(s)) {
                Some(spare) => spare.assign(spec, launch).await.inspect(|_| {
                    version.counters.spare_starts.fetch_add(1, Ordering::Relaxed);
                }),
                None => ProcessWorker::start(spec, launch).await,
            };
            // The module loads: from now on its workers can fork. The
            // zygote is asked for before the next spare, which ranks below
            // it in the memory budget.
            if let (Ok(_), Some(zygotes)) = (&worker, &zygotes) {
                zygotes.ensure(&version, zygote_log);
            }
            let worker = worker?;
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
        if let Some(z) = &self.zygotes {
            z.forget(bundle);
        }
    }

    fn close(&self) {
        self.spares.close();
        if let Some(z) = &self.zygotes {
            z.close();
        }
    }

    fn attach(&self, models: Models) {
        let _ = self.models.set(models);
    }
}
