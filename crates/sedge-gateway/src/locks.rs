//! What deploys, removals and secret changes wait for. Each function has a
//! lock of its own, held from a deploy's staging to the moment its new
//! version serves (or is refused): two deploys of one function are
//! ordered, but a deploy never waits for another function's build.
//! Secrets have one node-wide lock, held shared by a deploy only once its
//! dependencies are built (from checking its secrets to serving), and
//! exclusively by a change of a secret. Unpacking and removing bundle
//! folders take a short node-wide lock of their own.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard, OwnedRwLockReadGuard, OwnedRwLockWriteGuard, RwLock};

#[derive(Default)]
pub struct DeployLocks {
    functions: Mutex<HashMap<String, Arc<AsyncMutex<()>>>>,
    secrets: Arc<RwLock<()>>,
    folders: Arc<AsyncMutex<()>>,
}

impl DeployLocks {
    /// Function `name`'s own lock: its deploys and its removal, one at a time.
    pub async fn function(&self, name: &str) -> OwnedMutexGuard<()> {
        let lock = {
            let mut all = self.functions.lock().unwrap_or_else(|p| p.into_inner());
            // Locks no one holds or waits for go, so the map stays as small
            // as the set of functions being changed.
            all.retain(|_, l| Arc::strong_count(l) > 1);
            all.entry(name.to_owned()).or_default().clone()
        };
        lock.lock_owned().await
    }

    /// Held by a deploy while it checks and uses secrets, up to serving.
    pub async fn using_secrets(&self) -> OwnedRwLockReadGuard<()> {
        self.secrets.clone().read_owned().await
    }

    /// Held while a secret is created, changed or removed.
    pub async fn changing_secrets(&self) -> OwnedRwLockWriteGuard<()> {
        self.secrets.clone().write_owned().await
    }

    /// Held while bundle folders are unpacked or removed.
    pub async fn folders(&self) -> OwnedMutexGuard<()> {
        self.folders.clone().lock_owned().await
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn one_functions_changes_are_ordered_and_others_do_not_wait() {
        let locks = Arc::new(DeployLocks::default());
        let building = locks.function("a").await;
        // Another function's deploy goes ahead while a's build holds its lock.
        let other = tokio::time::timeout(Duration::from_secs(1), locks.function("b")).await;
        assert!(other.is_ok(), "b waited for a");
        drop(other);
        // A second deploy of a waits for the first.
        let second = {
            let locks = locks.clone();
            tokio::spawn(async move { drop(locks.function("a").await) })
        };
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(!second.is_finished(), "the second deploy of a went ahead of the first");
        drop(building);
        second.await.expect("the second deploy of a, once the first is done");
        assert!(locks.functions.lock().expect("map").len() <= 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_secret_change_waits_for_deploys_using_secrets_and_they_share() {
        let locks = Arc::new(DeployLocks::default());
        let one = locks.using_secrets().await;
        let two = tokio::time::timeout(Duration::from_secs(1), locks.using_secrets()).await;
        assert!(two.is_ok(), "deploys share the secrets");
        let change = {
            let locks = locks.clone();
            tokio::spawn(async move { drop(locks.changing_secrets().await) })
        };
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(!change.is_finished());
        drop((one, two));
        change.await.expect("the change, once the deploys are done");
    }
}
