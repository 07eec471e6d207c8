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
        #[cfg(feature = "onnx")]
        engines.insert(
            RuntimeKind::Onnx,
            Arc::new(crate::onnx::OnnxEngine::new(config.python.clone(), config.budget.model_cores())),
        );
        #[cfg(not(feature = "onnx"))]
        engines.unavailable(RuntimeKind::Onnx, "this sedge was built without its onnx feature");
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Runtime;

    fn spec(runtime: &str) -> sedge_core::FunctionSpec {
        let text = format!("name = \"f\"\nruntime = \"{runtime}\"\nhandler = \"handler.handle\"\n");
        sedge_core::FunctionSpec::parse("sedge.toml", &text).expect("a valid manifest")
    }

    #[test]
    fn a_kind_without_an_engine_is_refused_naming_it_and_why() {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let config =
            RuntimeConfig::install_shims(dir.path(), "python3".into(), "node".into(), false).expect("shims written");
        let mut engines = Engines::default();
        engines.unavailable(RuntimeKind::Node, "install Node.js 18 or later");
        let runtime = Runtime::with_engines(Arc::new(config), engines);
        let refused = |kind: &str| match runtime.prepare(spec(kind), dir.path().to_owned(), None) {
            Ok(_) => panic!("{kind} has no engine, yet a pool was made"),
            Err(e) => e.to_string(),
        };
        assert_eq!(
            refused("python"),
            "runtime \"python\" is not available on this node: no engine is registered for it"
        );
        assert_eq!(refused("node"), "runtime \"node\" is not available on this node: install Node.js 18 or later");
        assert!(runtime.names().is_empty());
    }

    #[test]
    fn the_standard_engines_run_every_kind_sedge_ships() {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let config =
            RuntimeConfig::install_shims(dir.path(), "python3".into(), "node".into(), false).expect("shims written");
        let engines = Engines::standard(&Arc::new(config));
        for kind in [RuntimeKind::Python, RuntimeKind::Node, RuntimeKind::Exec, RuntimeKind::Http, RuntimeKind::Onnx] {
            assert!(engines.get(kind).is_ok(), "no engine for {}", kind.as_str());
        }
    }
}
