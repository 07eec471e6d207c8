//! `/system/secrets`: OpenFaaS's secrets API (what `faas-cli secret
//! create|list|update|remove` call). Values go to the secret store and to
//! the functions that name them; no answer ever carries a value.

use axum::body::Bytes;
use axum::http::StatusCode;
use axum::Json;
use base64::Engine;
use sedge_core::SecretName;
use serde::Deserialize;
use serde_json::{json, Value};

use super::Shared;
use crate::namespace::{self, NAMESPACE};
use crate::{blocking, ApiError};

/// OpenFaaS's `types.Secret`: a text `value` or a base64 `rawValue`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SecretBody {
    name: String,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    value: Option<String>,
    #[serde(default)]
    raw_value: Option<String>,
}

const SHAPE: &str = r#"{"name": "NAME", "value": "TEXT"} or {"name": "NAME", "rawValue": "BASE64"}"#;

fn parse(body: &[u8]) -> Result<SecretBody, ApiError> {
    let b: SecretBody = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("expected a JSON body like {SHAPE}: {e}")))?;
    namespace::check(b.namespace.as_deref())?;
    Ok(b)
}

fn name(raw: &str) -> Result<SecretName, ApiError> {
    SecretName::parse(raw).map_err(|e| ApiError::bad_request(e.to_string()))
}

fn value(b: &SecretBody) -> Result<Vec<u8>, ApiError> {
    match (&b.value, &b.raw_value) {
        (Some(_), Some(_)) => Err(ApiError::bad_request("give either value or rawValue, not both")),
        (Some(text), None) => Ok(text.clone().into_bytes()),
        (None, Some(raw)) => base64::engine::general_purpose::STANDARD
            .decode(raw.trim())
            .map_err(|e| ApiError::bad_request(format!("rawValue is not base64: {e}"))),
        (None, None) => Err(ApiError::bad_request(format!("the secret has no value: expected {SHAPE}"))),
    }
}

#[derive(Deserialize)]
pub struct ListQuery {
    #[serde(default)]
    namespace: Option<String>,
}

pub async fn list(
    axum::extract::State(node): Shared,
    axum::extract::Query(q): axum::extract::Query<ListQuery>,
) -> Result<Json<Vec<Value>>, ApiError> {
    namespace::check(q.namespace.as_deref())?;
    let names = match node.cluster.get() {
        Some(cluster) => cluster.secret_names().await?,
        None => {
            let secrets = node.secrets.clone();
            blocking(move || Ok(secrets.list()?)).await?
        }
    };
    Ok(Json(names.iter().map(|n| json!({ "name": n.as_str(), "namespace": NAMESPACE })).collect()))
}

pub async fn create(axum::extract::State(node): Shared, body: Bytes) -> Result<StatusCode, ApiError> {
    let b = parse(&body)?;
    let (name, value) = (name(&b.name)?, value(&b)?);
    if let Some(cluster) = node.cluster.get() {
        cluster.create_secret(name, value).await?;
        return Ok(StatusCode::CREATED);
    }
    // Held so two creates of one name cannot both pass the existence check.
    let _guard = node.locks.changing_secrets().await;
    let secrets = node.secrets.clone();
    blocking(move || Ok(secrets.create(&name, &value)?)).await?;
    Ok(StatusCode::CREATED)
}

pub async fn update(axum::extract::State(node): Shared, body: Bytes) -> Result<StatusCode, ApiError> {
    let b = parse(&body)?;
    let (name, value) = (name(&b.name)?, value(&b)?);
    if let Some(cluster) = node.cluster.get() {
        cluster.update_secret(name, value).await?;
        return Ok(StatusCode::OK);
    }
    let _guard = node.locks.changing_secrets().await;
    let secrets = node.secrets.clone();
    let n = name.clone();
    blocking(move || Ok(secrets.update(&n, &value)?)).await?;
    crate::secrets::refresh_users(&node, &name).await?;
    Ok(StatusCode::OK)
}

pub async fn remove(axum::extract::State(node): Shared, body: Bytes) -> Result<StatusCode, ApiError> {
    let b = parse(&body)?;
    let name = name(&b.name)?;
    if let Some(cluster) = node.cluster.get() {
        cluster.remove_secret(name).await?;
        return Ok(StatusCode::OK);
    }
    // Exclusive, so no deploy can start using it meanwhile.
    let _guard = node.locks.changing_secrets().await;
    let users = crate::secrets::users(&node, &name).await?;
    if !users.is_empty() {
        return Err(crate::shared_secrets::secret_in_use(&name, &users));
    }
    let secrets = node.secrets.clone();
    blocking(move || Ok(secrets.remove(&name)?)).await?;
    Ok(StatusCode::OK)
}
