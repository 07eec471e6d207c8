//! Which engine starts the workers of each runtime kind: the one place that
//! knows every engine. Adding a runtime is an engine module and one entry
//! here (or one [`Engines::insert`] by whoever builds the node).

use std::collections::HashMap;
use std::sync::Arc;

use sedge_core::RuntimeKind;

use crate::engine::Engine;
use crate::exec::ExecEngine;
use crate::http::HttpEngine;
use crate::language::LanguageEngine;
use crate::{RuntimeConfig, NODE_SHIM_FILE, PYTHON_SHIM_FILE};

/// A runtime kind this node cannot run.
#[derive(Debug, Clone, thiserror::Error)]
#[error("runtime {kind:?} is not available on this node: {reason}")]
pub struct NoEngine {
    pub kind: &'static str,
    pub reason: String,
}

enum Entry {
    Ready(Arc<dyn Engine>),
    /// Known, but it cannot run here; the reason says what is missing.
    Unavailable(String),
}

/// The engines of a node, by runtime kind.
#[derive(Default)]
pub struct Engines(HashMap<RuntimeKind, Entry>);

impl Engines {
    /// The engines built into sedge, for every kind it ships.
    pub fn standard(config: &Arc<RuntimeConfig>) -> Self {
        let mut engines = Self::default();
        let python = config.shim_dir.join(PYTHON_SHIM_FILE);
        let node = config.shim_dir.join(NODE_SHIM_FILE);
        engines.insert(
            RuntimeKind::Python,
            Arc::new(LanguageEngine::new(config.clone(), "python", config.python.clone(), python)),
        );
        engines.insert(
            RuntimeKind::Node,
            Arc::new(LanguageEngine::new(config.clone(), "node", config.node.clone(), node)),
        );
        engines.insert(RuntimeKind::Exec, Arc::new(ExecEngine::new(config.clone())));
        engines.insert(RuntimeKind::Http, Arc::new(HttpEngine::new(config.clone())));
        engines
    }

    /// Runs `kind` with `engine`, in place of any engine it had.
    pub fn insert(&mut self, kind: RuntimeKind, engine: Arc<dyn Engine>) {
        self.0.insert(kind, Entry::Ready(engine));
    }

    /// Records that `kind` cannot run on this node, and why (what to
    /// install, say): deploying such a function fails with `reason`.
    pub fn unavailable(&mut self, kind: RuntimeKind, reason: impl Into<String>) {
        self.0.insert(kind, Entry::Unavailable(reason.into()));
    }

    /// The engine of `kind`.
    pub fn get(&self, kind: RuntimeKind) -> Result<Arc<dyn Engine>, NoEngine> {
        match self.0.get(&kind) {
            Some(Entry::Ready(engine)) => Ok(engine.clone()),
            Some(Entry::Unavailable(reason)) => Err(NoEngine { kind: kind.as_str(), reason: reason.clone() }),
            None => Err(NoEngine { kind: kind.as_str(), reason: "no engine is registered for it".to_owned() }),
        }
    }

    /// Every engine that can run, for the node's start and stop.
    pub fn all(&self) -> impl Iterator<Item = &Arc<dyn Engine>> {
        self.0.values().filter_map(|e| match e {
            Entry::Ready(engine) => Some(engine),
            Entry::Unavailable(_) => None,
        })
    }
}
