//! What the gateway asks of a cluster when the node is one of several
//! (`serve --cluster`): the nodes, cluster-wide deploys and removals, and
//! calls of functions this node does not run (or has no room for). The
//! single node has none of it: `Node::cluster` is `None` and every route
//! behaves as before. `sedge-cluster` implements it over NATS JetStream.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

pub use axum::http::StatusCode;
use sedge_core::{FunctionName, FunctionSpec, Invocation, InvokeError, Reply};
use sedge_queue::{Accepted, Call, Filter, NewCall};
use sedge_store::TempPath;
use serde_json::Value;

use crate::shared_secrets::SharedSecrets;
use crate::ApiError;

pub type Fut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Secrets and tokens are the cluster's too ([`SharedSecrets`]).
pub trait Cluster: SharedSecrets + Send + Sync {
    /// The body of `GET /system/nodes`.
    fn nodes(&self) -> Fut<'_, Result<Value, ApiError>>;

    /// Publishes a received bundle as function `name`'s version for every
    /// node it is placed on; with `wait`, answers once each of them serves
    /// it (or one refused it). The status and body of the deploy's answer.
    fn deploy(
        &self,
        name: FunctionName,
        archive: TempPath,
        wait: bool,
    ) -> Fut<'_, Result<(StatusCode, Value), ApiError>>;

    /// Removes function `name` from the cluster; whether it existed.
    fn remove(&self, name: FunctionName) -> Fut<'_, Result<bool, ApiError>>;

    /// The spec of a function deployed in the cluster, whether or not this
    /// node runs it.
    fn spec(&self, name: &str) -> Option<FunctionSpec>;

    /// The spec of a function of the cluster as [`Cluster::spec`], but when
    /// this node's copy of the registry does not have it (a watch behind,
    /// as while NATS elects a leader), read from the registry itself:
    /// once a deploy has been answered, every node knows the function.
    /// What it reads is kept in the node's copy: [`Cluster::spec`] and
    /// [`Cluster::functions`] have it from then on.
    fn lookup(&self, name: &str) -> Fut<'_, Option<FunctionSpec>>;

    /// Runs `inv` on another node that runs the function and has room,
    /// within `timeout`. `QueueFull` when every such node is full.
    fn forward(&self, name: &str, inv: Invocation, timeout: Duration) -> Fut<'_, Result<Reply, InvokeError>>;

    /// The cluster's asynchronous calls, in place of the node's own queue.
    fn calls(&self) -> &dyn ClusterCalls;

    /// Prometheus text (format 0.0.4) for the node's link to the cluster.
    fn metrics_text(&self) -> String;

    /// Every function of the registry as a record (its folder is not
    /// on this node unless it runs it).
    fn functions(&self) -> Vec<sedge_store::FunctionRecord>;

    /// Asks nodes a question of [`crate::inquiry_answer`] (every node
    /// known, this one included, or those named in `to`), each within a
    /// short timeout; one answer per node, sorted by name.
    fn ask(&self, question: Value, to: Option<Vec<String>>) -> Fut<'_, Vec<Asked>>;

    /// Keeps function `name` at `replicas` workers on every node that
    /// runs it, now and later (0: no pin, scaled by load).
    fn pin(&self, name: &str, replicas: u32) -> Fut<'_, Result<(), ApiError>>;
}

/// One node's answer to a question of the cluster-wide views.
#[derive(Debug, Clone)]
pub struct Asked {
    pub node: String,
    /// The functions its membership record says it runs.
    pub functions: Vec<String>,
    /// Its answer, or why there is none (did not answer in time, gone).
    pub answer: Result<Value, String>,
}

/// Asynchronous calls held by the cluster rather than the node's SQLite
/// queue: the same calls (`sedge_queue::Call`), the same answers, whichever
/// node is asked.
pub trait ClusterCalls: Send + Sync {
    /// Stores a call for the nodes that run its function: its id, or the
    /// first call's with `duplicate` for a repeated id or idempotency key.
    fn submit(&self, call: NewCall) -> Fut<'_, Result<Accepted, ApiError>>;

    fn get(&self, id: &str) -> Fut<'_, Result<Option<Call>, ApiError>>;

    /// Newest first, within the filter.
    fn list(&self, filter: Filter) -> Fut<'_, Result<Vec<Call>, ApiError>>;

    /// Queues a finished call again, attempts from zero.
    fn retry(&self, id: &str) -> Fut<'_, Result<(), ApiError>>;

    /// Removes finished calls within the filter; how many.
    fn purge(&self, filter: Filter) -> Fut<'_, Result<usize, ApiError>>;
}
