//! Secrets and invoke tokens when the node is one of a cluster: the
//! cluster holds them (`sedge-cluster` keeps them in a JetStream bucket),
//! and each node writes what it learns into its own `DATA/secrets` as a
//! single node does, so workers read them exactly as on one node.
//!
//! The secrets API and token rotation go through [`SharedSecrets`]; what
//! the cluster tells the node comes in through [`learned_secret`] and
//! [`learned_token`].

use std::sync::Arc;

use axum::http::StatusCode;
use sedge_core::{FunctionName, FunctionSpec, SecretName};

use crate::cluster::Fut;
use crate::{blocking, ApiError, Node};

/// The cluster's side of secrets and tokens.
pub trait SharedSecrets: Send + Sync {
    /// The names of the cluster's secrets, sorted.
    fn secret_names(&self) -> Fut<'_, Result<Vec<SecretName>, ApiError>>;

    /// Creates a secret for the whole cluster; 409 when it exists.
    fn create_secret(&self, name: SecretName, value: Vec<u8>) -> Fut<'_, Result<(), ApiError>>;

    /// Replaces a secret's value on every node; 404 when there is none.
    fn update_secret(&self, name: SecretName, value: Vec<u8>) -> Fut<'_, Result<(), ApiError>>;

    /// Removes a secret from every node; 409 while a function of the
    /// cluster names it.
    fn remove_secret(&self, name: SecretName) -> Fut<'_, Result<(), ApiError>>;

    /// The function's token, the same on every node: the cluster's, or
    /// else `local` (one this node had before it joined), or a new one.
    fn ensure_token(&self, function: FunctionName, local: Option<String>) -> Fut<'_, Result<String, ApiError>>;

    /// A new token for the function on every node; the old one stops working.
    fn rotate_token(&self, function: FunctionName) -> Fut<'_, Result<String, ApiError>>;

    /// Forgets the function's token, unless the version the cluster has
    /// of it still asks for invoke auth.
    fn drop_token(&self, function: FunctionName) -> Fut<'_, Result<(), ApiError>>;

    /// Reads the function's token from the cluster and writes it here as
    /// [`learned_token`] does: for a node whose copy lags (its watch
    /// behind, as while NATS elects a leader).
    fn read_token(&self, function: FunctionName) -> Fut<'_, Result<(), ApiError>>;
}

/// Before a call of function `name` that asks for invoke auth is checked
/// here: a token this node has not heard of yet is read from the cluster,
/// as the function's record is ([`crate::cluster::Cluster::lookup`]), so a
/// caller holding the right one is not refused.
pub(crate) async fn token_for_call(node: &Node, cluster: &dyn crate::cluster::Cluster, name: &str, requires: bool) {
    if !requires || node.tokens.get(name).is_some() {
        return;
    }
    let Ok(function) = FunctionName::parse(name) else { return };
    if let Err(e) = cluster.read_token(function).await {
        tracing::debug!("reading the token of {name} from the cluster: {}", e.message);
    }
}

/// A deploy naming a secret that does not exist, refused before a build.
pub fn missing_secret(spec: &FunctionSpec, missing: &SecretName) -> ApiError {
    ApiError::bad_request(format!(
        "function {} names secret {missing}, which does not exist: create it first (faas-cli secret create {missing})",
        spec.name
    ))
}

/// A secret that functions still name cannot be removed.
pub fn secret_in_use(name: &SecretName, users: &[String]) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        format!("secret {name} is used by {}: remove those functions or their use of it first", users.join(", ")),
    )
}

/// The cluster's value of secret `name` (`None`: removed), written here;
/// the functions using it here get their files rewritten.
pub async fn learned_secret(node: &Arc<Node>, name: &SecretName, value: Option<Vec<u8>>) -> Result<(), ApiError> {
    // As a secret changed through this node's API: no deploy is between
    // checking its secrets and serving meanwhile.
    let _guard = node.locks.changing_secrets().await;
    let secrets = node.secrets.clone();
    let n = name.clone();
    let changed = value.is_some();
    blocking(move || match value {
        Some(v) => Ok(secrets.put(&n, &v)?),
        None => match secrets.remove(&n) {
            Ok(()) | Err(sedge_store::SecretError::NotFound(_)) => Ok(()),
            Err(e) => Err(e.into()),
        },
    })
    .await?;
    if changed {
        crate::secrets::refresh_users(node, name).await?;
    }
    Ok(())
}

/// The cluster's token of `function` (`None`: it has none any more),
/// written here, so this node checks calls of it whether or not it runs it.
pub async fn learned_token(node: &Arc<Node>, function: &FunctionName, token: Option<String>) -> Result<(), ApiError> {
    let secrets = node.secrets.clone();
    let f = function.clone();
    let t = token.clone();
    blocking(move || match t {
        Some(t) => Ok(secrets.set_token(&f, &t)?),
        None => Ok(secrets.remove_token(&f)?),
    })
    .await?;
    match token {
        Some(t) => node.tokens.set(function, t),
        None => node.tokens.remove(function),
    }
    Ok(())
}
