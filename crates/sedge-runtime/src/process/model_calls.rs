//! A worker's model calls (`infer` frames): each runs in a task of its own
//! through [`Models`], bounded by the deadline of the invocation it belongs
//! to, and is answered with an `infer_result` or `infer_error` frame. The
//! tasks belong to the worker's reader: when the worker goes, they are
//! aborted and nothing is left running for it.

use std::sync::Arc;

use bytes::Bytes;
use sedge_core::FunctionName;
use sedge_protocol::{encode_head, join_tensors, split_tensors, Header, TensorHead};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::{lock, Outgoing, Pending};
use crate::engine::RawTensor;
use crate::models::{ModelInput, ModelOutput, Models};

/// Error texts are cut to this, so an `infer_error` frame always fits.
const MAX_ERROR_TEXT: usize = 64 * 1024;
/// Model calls one worker may have in flight: a function's threads waiting
/// on models are far fewer; a worker sending frames without end gets refusals,
/// not a task and a queue place for each.
const MAX_CALLS: usize = 64;

/// One `infer` frame, as the reader found it.
pub(super) struct Request {
    pub id: u64,
    pub call: u64,
    pub model: String,
    pub input: Result<ModelInput, String>,
}

impl Request {
    /// The request an `infer` frame's header and body make.
    pub fn read(id: u64, call: u64, model: String, inputs: Vec<TensorHead>, image: bool, body: Bytes) -> Self {
        let input = if image {
            Ok(ModelInput::Image(body))
        } else {
            split_tensors(&inputs, &body).map_err(|e| e.to_string()).map(|parts| {
                ModelInput::Tensors(
                    inputs
                        .into_iter()
                        .zip(parts)
                        .map(|(h, data)| RawTensor { name: h.name, datatype: h.datatype, shape: h.shape, data })
                        .collect(),
                )
            })
        };
        Self { id, call, model, input }
    }
}

/// The model calls in flight for one worker.
pub(super) struct ModelCalls {
    models: Option<Models>,
    declared: Arc<[FunctionName]>,
    /// Weak, so that a worker asked to stop still sees its channel end.
    frames: mpsc::WeakUnboundedSender<Outgoing>,
    pending: Pending,
    tasks: JoinSet<()>,
}

impl ModelCalls {
    pub fn new(
        models: Option<Models>,
        declared: &[FunctionName],
        frames: mpsc::WeakUnboundedSender<Outgoing>,
        pending: Pending,
    ) -> Self {
        Self { models, declared: declared.into(), frames, pending, tasks: JoinSet::new() }
    }

    /// Starts one call; its answer is sent when it ends.
    pub fn start(&mut self, req: Request) {
        // Finished calls are collected as new ones come.
        while self.tasks.try_join_next().is_some() {}
        if self.tasks.len() >= MAX_CALLS {
            send(&self.frames, req.id, Err(format!("a worker may have at most {MAX_CALLS} model calls in flight")));
            return;
        }
        let deadline = lock(&self.pending).get(&req.call).map(|c| c.deadline);
        let (models, declared, frames) = (self.models.clone(), self.declared.clone(), self.frames.clone());
        self.tasks.spawn(async move {
            let result = match (deadline, req.input, models) {
                (None, _, _) => Err(format!("the invocation {} this inference belongs to has ended", req.call)),
                (_, Err(e), _) => Err(e),
                (_, _, None) => Err("this node does not serve models to functions".to_owned()),
                (Some(deadline), Ok(input), Some(models)) => {
                    models.infer(&declared, &req.model, input, deadline).await.map_err(|e| e.to_string())
                }
            };
            // Past the invocation's deadline its caller is answered 504 and
            // the worker ended (the pool's rule): an error sent now would
            // only race that answer with the function's own handling of it
            // (an uncaught InferError answering 500 first).
            if result.is_err() && deadline.is_some_and(|d| Instant::now() >= d) {
                return;
            }
            send(&frames, req.id, result);
        });
    }

    /// Refuses a call whose inputs were over the worker's body limit.
    pub fn refuse(&self, id: u64, message: String) {
        send(&self.frames, id, Err(message));
    }
}

fn send(frames: &mpsc::WeakUnboundedSender<Outgoing>, id: u64, result: Result<ModelOutput, String>) {
    let (header, body) = match result {
        Ok(ModelOutput::Tensors(outputs)) => {
            let heads = outputs
                .iter()
                .map(|t| TensorHead {
                    name: t.name.clone(),
                    datatype: t.datatype.clone(),
                    shape: t.shape.clone(),
                    size: t.data.len() as u64,
                })
                .collect();
            let parts: Vec<Bytes> = outputs.into_iter().map(|t| t.data).collect();
            (Header::InferResult { id, outputs: heads, json: false }, join_tensors(&parts))
        }
        Ok(ModelOutput::Json(body)) => (Header::InferResult { id, outputs: vec![], json: true }, body),
        Err(error) => (Header::InferError { id, error: clip(error) }, Bytes::new()),
    };
    let (header, body) = match encode_head(&header, body.len()) {
        Ok(head) => (head, body),
        Err(e) => match encode_head(&Header::InferError { id, error: clip(e.to_string()) }, 0) {
            Ok(head) => (head, Bytes::new()),
            // An error frame of at most 64 KiB of text always encodes.
            Err(_) => return,
        },
    };
    // No sender: the worker has gone or was asked to stop; no one waits.
    if let Some(frames) = frames.upgrade() {
        let _ = frames.send(Outgoing { head: header, body });
    }
}

fn clip(mut text: String) -> String {
    if text.len() > MAX_ERROR_TEXT {
        let mut end = MAX_ERROR_TEXT;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push_str(" ... (cut)");
    }
    text
}
