//! End-to-end tests: each starts the real `sedge` binary on 127.0.0.1:0
//! with a fresh data directory, deploys real function folders (real Python,
//! Node.js and exec processes) and talks HTTP to it.

mod support;

mod async_calls;
mod bench;
mod bundles;
mod cluster;
mod cluster_calls;
mod cluster_shared;
mod credentials;
mod dependencies;
mod examples;
mod failures;
mod hostile;
mod http_runtime;
mod infer;
mod lifecycle;
mod limits;
mod messages;
mod models;
mod nats_triggers;
mod oip;
mod openfaas_api;
mod openfaas_compat;
mod persistence;
mod sandbox;
mod scaling;
mod styles;
mod titles;
mod triggers;
mod zygote;
