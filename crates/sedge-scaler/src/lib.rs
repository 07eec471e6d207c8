//! sedge-scaler
