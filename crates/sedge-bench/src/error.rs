//! The one error type of the benchmark library.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A bad experiment file; the message names the field.
    #[error("{}: {message}", file.display())]
    Experiment { file: PathBuf, message: String },
    #[error("invalid target URL {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error("{context}: {source}")]
    Io { context: String, source: std::io::Error },
    /// A management call to a sedge node failed or was refused.
    #[error("{0}")]
    Node(String),
    #[error("{0}")]
    Pack(#[from] sedge_store::pack::PackError),
    /// A results directory whose files cannot be read back.
    #[error("{}: {message}", path.display())]
    Results { path: PathBuf, message: String },
    #[error("drawing chart {name}: {message}")]
    Chart { name: String, message: String },
}

impl BenchError {
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let context = context.into();
        move |source| Self::Io { context, source }
    }
}
