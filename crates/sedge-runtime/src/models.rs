//! Models called from functions (`sedge.infer`): a worker's request to run
//! a model the node serves goes to that model function's pool, like any
//! other call of it, so scale from zero, its queue and its batching all
//! apply and one loaded model serves every worker of every function. A
//! model the node does not run goes to [`RemoteModels`] when the node has
//! one (in a cluster: another node that runs it).

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock, Weak};

use bytes::Bytes;
use sedge_core::{FunctionName, Invocation, InvokeError, RuntimeKind};
use tokio::time::Instant;

use crate::engine::{BoxFuture, RawTensor};
use crate::pool::Pool;

/// The node's pools by function name (the runtime's own map).
pub(crate) type PoolMap = RwLock<HashMap<String, Arc<Pool>>>;

/// What a function sends a model.
#[derive(Debug, Clone)]
pub enum ModelInput {
    Tensors(Vec<RawTensor>),
    /// A picture, for a model that takes images.
    Image(Bytes),
}

/// What a model answers.
#[derive(Debug, Clone)]
pub enum ModelOutput {
    Tensors(Vec<RawTensor>),
    /// The model's JSON answer to a picture (its best classes).
    Json(Bytes),
}

/// Why a model call did not happen; the text is what the function's code sees.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    #[error("{model} is not in this function's models = [{}]", quoted(.declared))]
    NotDeclared { model: String, declared: Vec<String> },
    #[error("model {0} is not deployed on this node")]
    NotDeployed(String),
    #[error("{model} is not a model function (runtime {runtime})")]
    NotAModel { model: String, runtime: &'static str },
    #[error("model {0} did not answer before the calling invocation's deadline")]
    Late(String),
    #[error("model {model} refused the request ({status}): {message}")]
    Refused { model: String, status: u16, message: String },
    #[error("{0}")]
    Invoke(#[from] InvokeError),
    #[error("the node is stopping")]
    Stopped,
}

fn quoted(names: &[String]) -> String {
    names.iter().map(|n| format!("{n:?}")).collect::<Vec<_>>().join(", ")
}

/// Models the node does not run, reached elsewhere (in a cluster, on a
/// node that runs them).
pub trait RemoteModels: Send + Sync {
    /// Runs `model` by `deadline`; `None` when it is nowhere else either.
    fn infer(
        &self,
        model: &str,
        input: ModelInput,
        deadline: Instant,
    ) -> BoxFuture<'_, Option<Result<ModelOutput, ModelError>>>;
}

/// Where the node's models not run here are reached; set once (`serve --cluster`).
pub(crate) type RemoteSlot = Arc<OnceLock<Arc<dyn RemoteModels>>>;

/// A handle on the node's models; it does not keep the runtime alive.
#[derive(Clone)]
pub struct Models {
    pools: Weak<PoolMap>,
    remote: RemoteSlot,
}

impl Models {
    pub(crate) fn new(pools: &Arc<PoolMap>, remote: &RemoteSlot) -> Self {
        Self { pools: Arc::downgrade(pools), remote: remote.clone() }
    }

    /// Runs `model` for a function that declared `declared`, by `deadline`
    /// (the calling invocation's). Dropping the future leaves nothing
    /// behind: a call a model has taken runs to its end in the pool's own
    /// task and its answer is discarded.
    pub async fn infer(
        &self,
        declared: &[FunctionName],
        model: &str,
        input: ModelInput,
        deadline: Instant,
    ) -> Result<ModelOutput, ModelError> {
        if !declared.iter().any(|d| d.as_str() == model) {
            return Err(ModelError::NotDeclared {
                model: model.to_owned(),
                declared: declared.iter().map(|d| d.to_string()).collect(),
            });
        }
        let pools = self.pools.upgrade().ok_or(ModelError::Stopped)?;
        let pool = pools.read().unwrap_or_else(|p| p.into_inner()).get(model).cloned();
        drop(pools);
        let run = async {
            let Some(pool) = pool else {
                let remote = self.remote.get().ok_or_else(|| ModelError::NotDeployed(model.to_owned()))?;
                return remote
                    .infer(model, input, deadline)
                    .await
                    .unwrap_or_else(|| Err(ModelError::NotDeployed(model.to_owned())));
            };
            let runtime = pool.spec().runtime;
            if runtime != RuntimeKind::Onnx {
                return Err(ModelError::NotAModel { model: model.to_owned(), runtime: runtime.as_str() });
            }
            match input {
                ModelInput::Tensors(t) => Ok(ModelOutput::Tensors(pool.infer(t, deadline).await?)),
                ModelInput::Image(body) => image(&pool, model, body).await,
            }
        };
        match tokio::time::timeout_at(deadline, run).await {
            Ok(Err(ModelError::Invoke(InvokeError::Timeout { .. }))) if Instant::now() >= deadline => {
                Err(ModelError::Late(model.to_owned()))
            }
            Ok(r) => r,
            Err(_) => Err(ModelError::Late(model.to_owned())),
        }
    }
}

/// A picture goes the way an HTTP caller's does, and the JSON answer back.
async fn image(pool: &Arc<Pool>, model: &str, body: Bytes) -> Result<ModelOutput, ModelError> {
    let reply = pool.invoke(image_call(body)).await?;
    image_answer(model, reply)
}

/// The call a picture for a model makes: a POST of it, typed by its first bytes.
pub fn image_call(body: Bytes) -> Invocation {
    Invocation {
        method: "POST".to_owned(),
        path: "/".to_owned(),
        query: String::new(),
        headers: vec![("content-type".to_owned(), picture_type(&body).to_owned())],
        body,
    }
}

/// What the function sees of a model's answer to a picture.
pub fn image_answer(model: &str, reply: sedge_core::Reply) -> Result<ModelOutput, ModelError> {
    if reply.status == 200 {
        return Ok(ModelOutput::Json(reply.body));
    }
    Err(refused(model, &reply))
}

/// A model's refusal, with the message of its JSON error when it has one.
pub fn refused(model: &str, reply: &sedge_core::Reply) -> ModelError {
    let message = serde_json::from_slice::<serde_json::Value>(&reply.body)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(&reply.body).into_owned());
    ModelError::Refused { model: model.to_owned(), status: reply.status, message }
}

/// The picture's type by its first bytes; the model's decoder reads any it knows.
fn picture_type(body: &[u8]) -> &'static str {
    if body.starts_with(b"\x89PNG") {
        "image/png"
    } else if body.starts_with(&[0xff, 0xd8]) {
        "image/jpeg"
    } else {
        "image/unknown"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_model_and_the_field() {
        let e = ModelError::NotDeclared { model: "effnet".into(), declared: vec!["digits".into()] };
        assert_eq!(e.to_string(), "effnet is not in this function's models = [\"digits\"]");
        let e = ModelError::NotDeclared { model: "effnet".into(), declared: vec![] };
        assert_eq!(e.to_string(), "effnet is not in this function's models = []");
        assert_eq!(
            ModelError::NotAModel { model: "hello".into(), runtime: "python" }.to_string(),
            "hello is not a model function (runtime python)"
        );
    }

    #[tokio::test]
    async fn undeclared_and_missing_models_are_refused() {
        let pools: Arc<PoolMap> = Arc::default();
        let models = Models::new(&pools, &RemoteSlot::default());
        let digits = FunctionName::parse("digits").expect("a name");
        let input = || ModelInput::Tensors(vec![]);
        let far = Instant::now() + std::time::Duration::from_secs(5);
        let e = models.infer(std::slice::from_ref(&digits), "effnet", input(), far).await.expect_err("undeclared");
        assert!(matches!(e, ModelError::NotDeclared { .. }), "{e}");
        let e = models.infer(&[digits], "digits", input(), far).await.expect_err("not deployed");
        assert_eq!(e, ModelError::NotDeployed("digits".into()));
        drop(pools);
        let e = models
            .infer(&[FunctionName::parse("m").expect("a name")], "m", input(), far)
            .await
            .expect_err("no runtime");
        assert_eq!(e, ModelError::Stopped);
    }
}
