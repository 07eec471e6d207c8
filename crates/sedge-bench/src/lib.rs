//! The benchmark behind `sedge bench`: the paper's evaluation — frameworks ×
//! languages × workloads × concurrent users — as experiment files, a load
//! generator, and reports with charts.
//!
//! - [`load`]: the generator: N users on keep-alive connections, closed or
//!   open loop, every request timed and classified ([`outcome`]) over the
//!   HTTP/1.1 client in [`http`].
//! - [`stats`]: counts, throughput and HdrHistogram percentiles.
//! - [`experiment`]: experiment files (targets × functions × users ×
//!   repetitions), checked field by field.
//! - [`run`]: runs an experiment; [`node`] starts a local sedge node and
//!   makes the management calls (deploy, scale to zero); [`procstat`]
//!   samples the node's and its workers' CPU and memory from `/proc`.
//! - [`record`]: the raw results on disk; [`report`] turns them into
//!   `summary.json`, `summary.md`, `report.html` and SVG charts.
//! - [`hangup`]: clients hanging up mid-request beside clients that stay.
//! - [`trivial`] and [`ceiling`]: a trivial server and `wrk`, to measure the
//!   generator's own ceiling.
//!
//! Neighbours: the `sedge` binary drives it (`sedge bench`) and builds the
//! tokio runtime; `sedge-store` packs function folders into bundles; the
//! targets are sedge nodes (`sedge-gateway`'s HTTP API) or any HTTP FaaS.

pub mod ceiling;
pub mod engine;
pub mod error;
pub mod experiment;
pub mod hangup;
pub mod http;
pub mod load;
pub mod node;
pub mod outcome;
pub mod procstat;
pub mod record;
pub mod report;
pub mod run;
pub mod stats;
pub mod trivial;

pub use error::BenchError;
pub use experiment::Experiment;
pub use load::{LoadPlan, LoadResult, Stop};
pub use outcome::{Outcome, Sample};
pub use stats::Summary;

/// A duration as written on the command line or in experiment files:
/// `"500ms"`, `"10s"`, `"1m 30s"`.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("{text:?} is not a duration like \"500ms\" or \"10s\": {e}"))
}
