//! Functions and their secrets and tokens: what a deploy, a restore and a
//! removal must do so that a function finds the secrets it names and, when
//! it asks for invoke auth, has a token.
//!
//! Two steps, because a new version may still be refused after it is
//! prepared: [`prepare`] only adds (files, a token) and so cannot break the
//! version still serving; [`settle`] takes away what the version that now
//! serves no longer names.

use std::sync::Arc;

use axum::http::StatusCode;
use sedge_core::{FunctionName, FunctionSpec, SecretName};

use crate::{blocking, ApiError, Node};

/// Checks that every secret `spec` names exists.
pub fn check(node: &Node, spec: &FunctionSpec) -> Result<(), ApiError> {
    if let Some(missing) = spec.secrets.iter().find(|n| !node.secrets.exists(n)) {
        return Err(crate::shared_secrets::missing_secret(spec, missing));
    }
    Ok(())
}

/// Checks that every secret `spec` names exists, writes its secret files
/// and makes its invoke token if it needs one. Run before a version serves.
pub async fn prepare(node: &Arc<Node>, spec: &FunctionSpec) -> Result<(), ApiError> {
    check(node, spec)?;
    let secrets = node.secrets.clone();
    let (name, names, wants_token) = (spec.name.clone(), spec.secrets.clone(), spec.auth.invoke);
    // In a cluster the token is the cluster's, the same on every node.
    let shared = match node.cluster.get().filter(|_| wants_token) {
        Some(cluster) => {
            let (s, n) = (secrets.clone(), name.clone());
            let local = blocking(move || Ok(s.token(&n)?)).await?;
            Some(cluster.ensure_token(name.clone(), local).await?)
        }
        None => None,
    };
    let n = name.clone();
    let token = blocking(move || {
        secrets.materialize(&n, &names)?;
        Ok(match (wants_token, shared) {
            (false, _) => None,
            (true, Some(t)) => {
                secrets.set_token(&n, &t)?;
                Some(t)
            }
            (true, None) => Some(secrets.ensure_token(&n)?),
        })
    })
    .await?;
    if let Some(t) = token {
        node.tokens.set(&name, t);
    }
    Ok(())
}

/// Once `spec`'s version serves: removes the secret files and the token it
/// no longer asks for.
pub async fn settle(node: &Arc<Node>, spec: &FunctionSpec) -> Result<(), ApiError> {
    let secrets = node.secrets.clone();
    let (name, names, wants_token) = (spec.name.clone(), spec.secrets.clone(), spec.auth.invoke);
    // In a cluster the token leaves every node at once, through the cluster.
    let drop_here = !wants_token && node.cluster.get().is_none();
    if let Some(cluster) = node.cluster.get().filter(|_| !wants_token) {
        cluster.drop_token(name.clone()).await?;
    }
    if drop_here {
        node.tokens.remove(&name);
    }
    blocking(move || {
        secrets.prune(&name, &names)?;
        if drop_here {
            secrets.remove_token(&name)?;
        }
        Ok(())
    })
    .await
}

/// Forgets a removed function's secret files and token. In a cluster the
/// token stays: the function may run elsewhere, and every node checks its
/// calls; it goes when the cluster removes the function.
pub async fn forget(node: &Arc<Node>, name: &FunctionName) -> Result<(), ApiError> {
    let clustered = node.cluster.get().is_some();
    if !clustered {
        node.tokens.remove(name);
    }
    let secrets = node.secrets.clone();
    let n = name.clone();
    blocking(move || {
        secrets.unmount(&n)?;
        if !clustered {
            secrets.remove_token(&n)?;
        }
        Ok(())
    })
    .await
}

/// Names of the deployed functions that use secret `secret`.
pub async fn users(node: &Arc<Node>, secret: &SecretName) -> Result<Vec<String>, ApiError> {
    let store = node.store.clone();
    let records = blocking(move || Ok(store.list()?)).await?;
    Ok(records.into_iter().filter(|r| r.spec.secrets.contains(secret)).map(|r| r.spec.name.to_string()).collect())
}

/// Rewrites the secret files of every function using `secret` after its
/// value changed, so their workers read the new value.
pub async fn refresh_users(node: &Arc<Node>, secret: &SecretName) -> Result<(), ApiError> {
    let (store, secrets, secret) = (node.store.clone(), node.secrets.clone(), secret.clone());
    blocking(move || {
        for r in store.list()?.into_iter().filter(|r| r.spec.secrets.contains(&secret)) {
            secrets.materialize(&r.spec.name, &r.spec.secrets)?;
        }
        Ok(())
    })
    .await
}

/// A new invoke token for `name`; the old one stops working at once.
pub async fn rotate(node: &Arc<Node>, name: &FunctionName, requires: bool) -> Result<String, ApiError> {
    if !requires {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("function {name} does not ask for invoke auth: set [auth] invoke = true in its sedge.toml"),
        ));
    }
    // The cluster's rotation reaches this node as every other.
    if let Some(cluster) = node.cluster.get() {
        return cluster.rotate_token(name.clone()).await;
    }
    let secrets = node.secrets.clone();
    let n = name.clone();
    let token = blocking(move || Ok(secrets.rotate_token(&n)?)).await?;
    node.tokens.set(name, token.clone());
    Ok(token)
}
