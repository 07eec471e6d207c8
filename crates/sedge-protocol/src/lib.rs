//! sedge-protocol
