//! Secrets and invoke tokens shared by every node through the
//! `sedge-secrets` key-value bucket: `secret.NAME` holds a secret's value
//! (a `.` of the name as `_`, which no secret name has, so every key is a
//! plain NATS subject), `token.FUNCTION` a function's invoke token.
//!
//! A change made through any node goes to the bucket first; every node
//! (the one that made it included) writes what the bucket holds into its
//! own `DATA/secrets` through the gateway, in the bucket's order: a value
//! older than one already written is skipped. A node reads the whole bucket
//! when it joins (a removed secret's marker removes its copy; secrets and
//! tokens the cluster has never seen, from before the node joined, are put
//! in the cluster), then follows the bucket's changes, and reads it whole
//! again now and then, since a watch may miss changes while NATS elects a
//! leader.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv::{self, Operation};
use bytes::Bytes;
use futures_util::StreamExt;
use sedge_core::{FunctionName, SecretName};
use sedge_gateway::cluster::{Fut, StatusCode};
use sedge_gateway::shared_secrets::{self, SharedSecrets};
use sedge_gateway::ApiError;
use sedge_store::SecretError;

use crate::{js_error, Cluster, ClusterError};

pub(crate) const BUCKET: &str = "sedge-secrets";

/// How often the bucket is read whole, besides being watched.
const RELOAD_EVERY: Duration = Duration::from_secs(10);

/// What a key of the bucket names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Key {
    Secret(SecretName),
    Token(FunctionName),
}

impl Key {
    pub(crate) fn key(&self) -> String {
        match self {
            Key::Secret(name) => format!("secret.{}", name.as_str().replace('.', "_")),
            Key::Token(function) => format!("token.{function}"),
        }
    }

    pub(crate) fn parse(key: &str) -> Option<Self> {
        if let Some(rest) = key.strip_prefix("secret.") {
            return SecretName::parse(&rest.replace('_', ".")).ok().map(Key::Secret);
        }
        key.strip_prefix("token.").and_then(|f| FunctionName::parse(f).ok()).map(Key::Token)
    }
}

/// The bucket's revision last written here, by key; secrets and tokens
/// apart, so a token (taken by a deploy holding the secrets lock shared)
/// never waits for a secret's write (which takes it exclusively).
#[derive(Default)]
pub(crate) struct Applied {
    secrets: tokio::sync::Mutex<HashMap<String, u64>>,
    tokens: tokio::sync::Mutex<HashMap<String, u64>>,
}

impl Applied {
    fn of(&self, key: &Key) -> &tokio::sync::Mutex<HashMap<String, u64>> {
        match key {
            Key::Secret(_) => &self.secrets,
            Key::Token(_) => &self.tokens,
        }
    }
}

fn store_error(what: &str, e: impl std::fmt::Display) -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("{what} in the cluster: {e}"))
}

fn latest(entry: Option<kv::Entry>) -> Option<(u64, Option<Bytes>)> {
    entry.map(|e| match e.operation {
        Operation::Put => (e.revision, Some(e.value)),
        Operation::Delete | Operation::Purge => (e.revision, None),
    })
}

impl Cluster {
    /// The bucket's last entry for `key`: its revision and value (`None`
    /// for a removal's marker); `None` when the key was never written.
    async fn entry_of(&self, key: &Key) -> Result<Option<(u64, Option<Bytes>)>, ApiError> {
        let entry = self.secrets.entry(key.key()).await.map_err(|e| store_error("reading a secret", e))?;
        Ok(latest(entry))
    }

    /// Writes here what the bucket holds for `key` at `revision`, unless a
    /// later revision already is.
    async fn apply(&self, key: &Key, revision: u64, value: Option<Bytes>) -> Result<(), ApiError> {
        let node = self.node().ok_or_else(|| ApiError::internal("cluster", "the node is stopping"))?;
        let raw = key.key();
        let mut seen = self.applied.of(key).lock().await;
        if seen.get(&raw).is_some_and(|r| *r >= revision) {
            return Ok(());
        }
        match key {
            Key::Secret(name) => shared_secrets::learned_secret(&node, name, value.map(|v| v.to_vec())).await?,
            Key::Token(function) => {
                let token = value.map(|v| String::from_utf8_lossy(&v).into_owned());
                shared_secrets::learned_token(&node, function, token).await?;
            }
        }
        seen.insert(raw, revision);
        Ok(())
    }

    /// Brings this node's secrets and tokens in line with the bucket;
    /// `joining`: those only this node has are put in the cluster.
    async fn catch_up(&self, joining: bool) -> Result<(), ApiError> {
        let node = self.node().ok_or_else(|| ApiError::internal("cluster", "the node is stopping"))?;
        let mut live = BTreeSet::new();
        let mut keys = self.secrets.keys().await.map_err(|e| store_error("listing the secrets", e))?;
        while let Some(key) = keys.next().await {
            live.insert(key.map_err(|e| store_error("listing the secrets", e))?);
        }
        let store = node.secrets.clone();
        let (values, tokens) =
            tokio::task::spawn_blocking(move || Ok::<_, SecretError>((store.list()?, store.token_names()?)))
                .await
                .map_err(|e| ApiError::internal("secrets task", e))??;
        let mut here: Vec<Key> = values.into_iter().map(Key::Secret).collect();
        here.extend(tokens.into_iter().map(Key::Token));
        for key in here.iter().filter(|k| !live.contains(&k.key())) {
            match self.entry_of(key).await? {
                Some((revision, value)) => self.apply(key, revision, value).await?,
                None if joining => self.publish_own(&node, key).await?,
                None => {}
            }
        }
        for raw in &live {
            let Some(key) = Key::parse(raw) else { continue };
            if let Some((revision, value)) = self.entry_of(&key).await? {
                self.apply(&key, revision, value).await?;
            }
        }
        Ok(())
    }

    /// Puts in the cluster a secret or token this node had before it
    /// joined, unless another node put one meanwhile.
    async fn publish_own(&self, node: &sedge_gateway::Node, key: &Key) -> Result<(), ApiError> {
        let store = node.secrets.clone();
        let k = key.clone();
        let value = tokio::task::spawn_blocking(move || match &k {
            Key::Secret(name) => store.read(name),
            Key::Token(function) => store.token(function).map(|t| t.unwrap_or_default().into_bytes()),
        })
        .await
        .map_err(|e| ApiError::internal("secrets task", e))??;
        match self.secrets.create(key.key(), value.into()).await {
            Ok(revision) => {
                tracing::info!("cluster: {} from this node's data put in the cluster", key.key());
                self.note(key, revision).await;
                Ok(())
            }
            Err(_) => match self.entry_of(key).await? {
                Some((revision, value)) => self.apply(key, revision, value).await,
                None => Err(store_error("storing a secret", "neither stored nor readable")),
            },
        }
    }

    /// Records that this node already holds `key` as of `revision`.
    async fn note(&self, key: &Key, revision: u64) {
        let mut seen = self.applied.of(key).lock().await;
        let r = seen.entry(key.key()).or_default();
        *r = (*r).max(revision);
    }

    /// Makes sure this node holds the secrets `names` before it deploys
    /// a function naming them (the watch may not have brought them yet).
    pub(crate) async fn fetch_secrets(&self, names: &[SecretName]) -> Result<(), ApiError> {
        for name in names {
            let key = Key::Secret(name.clone());
            if let Some((revision, value)) = self.entry_of(&key).await? {
                self.apply(&key, revision, value).await?;
            }
        }
        Ok(())
    }

    /// Refuses a deploy naming a secret the cluster does not have, as a
    /// single node refuses one naming a secret it does not have.
    pub(crate) async fn check_secrets(&self, spec: &sedge_core::FunctionSpec) -> Result<(), ApiError> {
        for name in &spec.secrets {
            if !matches!(self.entry_of(&Key::Secret(name.clone())).await?, Some((_, Some(_)))) {
                return Err(shared_secrets::missing_secret(spec, name));
            }
        }
        Ok(())
    }

    /// Forgets a removed function's token in the whole cluster.
    pub(crate) async fn forget_token(&self, function: &str) {
        let Ok(function) = FunctionName::parse(function) else { return };
        let key = Key::Token(function);
        if matches!(self.entry_of(&key).await, Ok(Some((_, Some(_))))) {
            if let Err(e) = self.secrets.delete(key.key()).await {
                tracing::warn!("cluster: removing the token of a removed function: {e}");
            }
        }
    }

    fn users_of(&self, secret: &SecretName) -> Vec<String> {
        let registry = self.registry.read().unwrap_or_else(|p| p.into_inner());
        registry.values().filter(|e| e.spec.secrets.contains(secret)).map(|e| e.record.name.clone()).collect()
    }

    async fn put_value(&self, key: &Key, value: Vec<u8>) -> Result<u64, ApiError> {
        self.secrets.put(key.key(), value.into()).await.map_err(|e| store_error("storing a secret", e))
    }

    async fn new_token(&self) -> Result<String, ApiError> {
        let token = tokio::task::spawn_blocking(sedge_store::secrets::random_token)
            .await
            .map_err(|e| ApiError::internal("secrets task", e))??;
        Ok(token)
    }
}

/// A secret's value is one message in the bucket: it must fit the NATS
/// server's `max_payload`, besides the node's own limit.
fn check_size(name: &SecretName, value: &[u8], max_payload: usize) -> Result<(), ApiError> {
    if value.len() > sedge_store::secrets::MAX_SECRET {
        return Err(SecretError::TooLarge { name: name.to_string(), size: value.len() }.into());
    }
    let room = max_payload.saturating_sub(1024);
    if value.len() > room {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "secret {name:?} is {} bytes; in this cluster a secret is at most {room} bytes (the NATS server's max_payload, less its headers)",
                value.len()
            ),
        ));
    }
    Ok(())
}

impl SharedSecrets for Cluster {
    fn secret_names(&self) -> Fut<'_, Result<Vec<SecretName>, ApiError>> {
        Box::pin(async move {
            let mut names = Vec::new();
            let mut keys = self.secrets.keys().await.map_err(|e| store_error("listing the secrets", e))?;
            while let Some(key) = keys.next().await {
                if let Some(Key::Secret(name)) = Key::parse(&key.map_err(|e| store_error("listing the secrets", e))?) {
                    names.push(name);
                }
            }
            // A secret written while the listing runs comes again: once each.
            names.sort();
            names.dedup();
            Ok(names)
        })
    }

    fn create_secret(&self, name: SecretName, value: Vec<u8>) -> Fut<'_, Result<(), ApiError>> {
        Box::pin(async move {
            check_size(&name, &value, self.max_payload())?;
            let key = Key::Secret(name.clone());
            let bytes = Bytes::from(value);
            let revision = match self.secrets.create(key.key(), bytes.clone()).await {
                Ok(r) => r,
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                    return Err(SecretError::Exists(name.to_string()).into());
                }
                Err(e) => return Err(store_error("storing a secret", e)),
            };
            self.apply(&key, revision, Some(bytes)).await
        })
    }

    fn update_secret(&self, name: SecretName, value: Vec<u8>) -> Fut<'_, Result<(), ApiError>> {
        Box::pin(async move {
            check_size(&name, &value, self.max_payload())?;
            let key = Key::Secret(name.clone());
            let bytes = Bytes::from(value);
            // Over the revision read: a secret removed meanwhile through
            // another node stays removed, not brought back by a put.
            for _ in 0..5 {
                let Some((read, Some(_))) = self.entry_of(&key).await? else {
                    return Err(SecretError::NotFound(name.to_string()).into());
                };
                match self.secrets.update(key.key(), bytes.clone(), read).await {
                    Ok(revision) => return self.apply(&key, revision, Some(bytes)).await,
                    Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {}
                    Err(e) => return Err(store_error("storing a secret", e)),
                }
            }
            Err(ApiError::new(
                StatusCode::CONFLICT,
                format!("secret {name:?} kept changing through other nodes while being updated; try again"),
            ))
        })
    }

    fn remove_secret(&self, name: SecretName) -> Fut<'_, Result<(), ApiError>> {
        Box::pin(async move {
            let users = self.users_of(&name);
            if !users.is_empty() {
                return Err(shared_secrets::secret_in_use(&name, &users));
            }
            let key = Key::Secret(name.clone());
            if !matches!(self.entry_of(&key).await?, Some((_, Some(_)))) {
                return Err(SecretError::NotFound(name.to_string()).into());
            }
            self.secrets.delete(key.key()).await.map_err(|e| store_error("removing a secret", e))?;
            match self.entry_of(&key).await? {
                Some((revision, value)) => self.apply(&key, revision, value).await,
                None => Ok(()),
            }
        })
    }

    fn ensure_token(&self, function: FunctionName, local: Option<String>) -> Fut<'_, Result<String, ApiError>> {
        Box::pin(async move {
            let key = Key::Token(function);
            let fresh = match self.entry_of(&key).await? {
                Some((_, Some(token))) => return Ok(String::from_utf8_lossy(&token).into_owned()),
                // Removed from the cluster since this node had it: a new one.
                Some((_, None)) => self.new_token().await?,
                None => match local {
                    Some(own) => own,
                    None => self.new_token().await?,
                },
            };
            match self.secrets.create(key.key(), fresh.clone().into_bytes().into()).await {
                Ok(revision) => {
                    self.note(&key, revision).await;
                    Ok(fresh)
                }
                // Another node made it first: theirs is the cluster's.
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => match self.entry_of(&key).await? {
                    Some((_, Some(token))) => Ok(String::from_utf8_lossy(&token).into_owned()),
                    _ => Err(store_error("storing a token", "neither stored nor readable")),
                },
                Err(e) => Err(store_error("storing a token", e)),
            }
        })
    }

    fn rotate_token(&self, function: FunctionName) -> Fut<'_, Result<String, ApiError>> {
        Box::pin(async move {
            let token = self.new_token().await?;
            let key = Key::Token(function);
            let revision = self.put_value(&key, token.clone().into_bytes()).await?;
            self.apply(&key, revision, Some(token.clone().into_bytes().into())).await?;
            Ok(token)
        })
    }

    fn read_token(&self, function: FunctionName) -> Fut<'_, Result<(), ApiError>> {
        Box::pin(async move {
            let key = Key::Token(function);
            // Bounded as a registry lookup is: the call waits on it.
            let read = tokio::time::timeout(crate::registry::LOOKUP_WITHIN, self.entry_of(&key)).await;
            let entry =
                read.map_err(|_| ApiError::new(StatusCode::GATEWAY_TIMEOUT, "the cluster did not answer"))??;
            match entry {
                Some((revision, value)) => self.apply(&key, revision, value).await,
                None => Ok(()),
            }
        })
    }

    fn drop_token(&self, function: FunctionName) -> Fut<'_, Result<(), ApiError>> {
        Box::pin(async move {
            // The registry itself, not this node's copy of it: a node
            // restoring an old version before it has read the registry must
            // not take the token of the version the cluster runs.
            let record =
                self.functions.get(function.as_str()).await.map_err(|e| store_error("reading the registry", e))?;
            let entry = record.and_then(|v| crate::registry::Entry::parse(&v).ok());
            if entry.is_some_and(|e| e.spec.auth.invoke) {
                return Ok(());
            }
            let key = Key::Token(function);
            if matches!(self.entry_of(&key).await?, Some((_, Some(_)))) {
                self.secrets.delete(key.key()).await.map_err(|e| store_error("removing a token", e))?;
            }
            Ok(())
        })
    }
}

/// Catches up with the bucket, then follows it.
pub(crate) async fn start(cluster: &Arc<Cluster>) -> Result<(), ClusterError> {
    cluster.catch_up(true).await.map_err(|e| js_error("reading the secrets", e.message))?;
    let mut watch = cluster.secrets.watch_with_history(">").await.map_err(|e| js_error("watching the secrets", e))?;
    let weak = Arc::downgrade(cluster);
    tokio::spawn(async move {
        while let Some(entry) = crate::next_entry(&mut watch, "the secrets").await {
            let Some(cluster) = weak.upgrade() else { return };
            let Some(key) = Key::parse(&entry.key) else { continue };
            let value = matches!(entry.operation, Operation::Put).then_some(entry.value);
            if let Err(e) = cluster.apply(&key, entry.revision, value).await {
                tracing::warn!("cluster: writing {} here: {}", entry.key, e.message);
            }
        }
    });
    let weak = Arc::downgrade(cluster);
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(RELOAD_EVERY).await;
            let Some(cluster) = weak.upgrade() else { return };
            if let Err(e) = cluster.catch_up(false).await {
                tracing::warn!("cluster: reading the secrets: {}", e.message);
            }
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_subjects_and_come_back_as_they_went() {
        let dotted = Key::Secret(SecretName::parse("api.key.v2").expect("name"));
        assert_eq!(dotted.key(), "secret.api_key_v2");
        assert_eq!(Key::parse(&dotted.key()), Some(dotted));
        let token = Key::Token(FunctionName::parse("guarded").expect("name"));
        assert_eq!(token.key(), "token.guarded");
        assert_eq!(Key::parse("token.guarded"), Some(token));
        for other in ["admin-password", "secret.", "token.Not_A_Name", "other.x"] {
            assert_eq!(Key::parse(other), None, "{other}");
        }
    }

    #[test]
    fn a_secret_must_fit_one_message() {
        let name = SecretName::parse("big").expect("name");
        assert!(check_size(&name, &[0; 1000], 1024 * 1024).is_ok());
        let e = check_size(&name, &vec![0; 1024 * 1024 - 10], 1024 * 1024).expect_err("over max_payload");
        assert_eq!(e.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(e.message.contains("max_payload"), "{}", e.message);
        let e = check_size(&name, &vec![0; 2 * 1024 * 1024], 8 * 1024 * 1024).expect_err("over the node's limit");
        assert_eq!(e.status, StatusCode::PAYLOAD_TOO_LARGE);
    }
}
