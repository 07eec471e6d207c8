//! sedge-store
