//! sedge-runtime
