//! ONNX models served by the node itself (`runtime = "onnx"`): one loaded
//! model shared by every request, run by ONNX Runtime (loaded at run time,
//! so the node works without it), with dynamic batching.
//!
//! - [`model`]: finding ONNX Runtime, loading sessions, running tensors.
//! - [`shared`]: one session run from several threads at once.
//! - [`tensor`]: tensors in JSON and bytes, checked against the model (pure).
//! - [`prep`]: a JPEG or PNG to an input tensor; scores to top classes.
//! - [`cores`]: the node's cores shared among loaded models.
//! - [`batch`]: the batching policy over a queue (pure, simulated time).
//! - [`oip`]: the Open Inference Protocol's infer messages, binary data included (pure).
//! - [`serve`]: a served model — requests to tensors, the runner threads that
//!   take batches from the queue themselves and run them, answers.
//!
//! Neighbours: `sedge-core` (the `[model]` spec, invocations); the runtime
//! wraps a [`serve::Served`] as its onnx engine.

pub mod batch;
pub mod cores;
pub mod model;
pub mod oip;
pub mod prep;
pub mod serve;
pub mod shared;
pub mod tensor;

pub use model::Model;
pub use serve::Served;

#[derive(Debug, Clone, thiserror::Error)]
pub enum OnnxError {
    /// ONNX Runtime itself cannot be found or loaded.
    #[error("ONNX Runtime is not available: {0}")]
    NoRuntime(String),
    #[error("{0}")]
    Load(String),
    #[error("{0}")]
    Unsupported(String),
    /// The manifest asks for something this model cannot do.
    #[error("{0}")]
    Config(String),
}
