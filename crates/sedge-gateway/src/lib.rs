//! sedge-gateway
