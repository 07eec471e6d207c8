//! sedge's domain model, shared by every other crate and free of I/O.
//!
//! - [`manifest`]: a function folder's `sedge.toml` (the user's form) checked
//!   and normalised into a [`FunctionSpec`] (the locked form the node runs).
//! - [`name`]: function names (DNS labels).
//! - [`invocation`]: one call of a function and its answer, as the gateway
//!   hands it to the runtime, and the [`InvokeError`] kinds the gateway maps
//!   to HTTP statuses.
//! - [`timestamp`]: RFC 3339 times with their offsets, as clients send them.
//! - [`model`]: a model function's `[model]` and `[batching]` tables.
//! - [`async_policy`]: a function's `[async]` table (retries of queued calls).
//! - [`trigger`]: a function's `[[triggers]]` (MQTT, NATS, cron events).
//! - [`figures`]: counters and latency histograms recorded as the node
//!   works (a served model's queue waits and runs), read when scraped.
//! - [`buffers`]: large byte buffers (request bodies, worker frames) kept
//!   for the next request instead of mapped fresh each time.
//!
//! Neighbours: `sedge-store` persists manifests, `sedge-runtime` runs specs,
//! `sedge-gateway` turns HTTP into [`Invocation`]s.

pub mod async_policy;
pub mod buffers;
pub mod figures;
pub mod invocation;
pub mod manifest;
pub mod model;
pub mod name;
pub mod timestamp;
pub mod trigger;

pub use async_policy::{AsyncSpec, RetryClass};
pub use invocation::{Invocation, InvokeError, Reply};
pub use manifest::{FunctionSpec, Limits, ManifestError, Placement, RuntimeKind, Scale, Style};
pub use name::{FunctionName, NameError, SecretName};
pub use trigger::{TriggerSource, TriggerSpec};
