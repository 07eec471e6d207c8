//! The node's durable state: which functions are deployed, from which bundle.
//!
//! - [`bundle`]: checks and unpacks an uploaded `tar.gz` of a function folder
//!   without letting any entry escape it.
//! - [`pack`]: the other direction, a folder into a bundle (CLI, benchmark).
//! - [`Store`]: the registry in an embedded SQLite file, with the bundles'
//!   archives beside it so a restart (or a lost unpacked folder) recovers every
//!   function. Opening a store takes an exclusive lock on its directory.
//!
//! - [`secrets`]: the admin password, functions' secret values and invoke
//!   tokens, as private files under the data directory.
//!
//! Neighbours: `sedge-core` for manifests; the gateway calls the store on
//! deploy and list; the runtime runs the unpacked folders.

pub mod bundle;
pub mod pack;
pub mod secrets;
mod sqlite;

pub use bundle::{BundleError, UnpackLimits};
pub use secrets::{SecretError, SecretStore};
pub use sqlite::{FunctionRecord, StagedBundle, Store, StoreError};
pub use tempfile::TempPath;
