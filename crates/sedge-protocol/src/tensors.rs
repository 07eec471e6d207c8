//! Tensors in a frame: the header describes each one (name, element type,
//! shape, byte count) and the body holds their raw bytes back to back, so
//! a large tensor crosses the channel without being turned into text.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// One tensor of an `infer` or `infer_result` frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorHead {
    /// The model's input or output name; an input may leave it empty when
    /// the model has only one.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// The element type as the Open Inference Protocol names it (`FP32`, `INT64`, ...).
    pub datatype: String,
    pub shape: Vec<u64>,
    /// Its bytes in the frame's body.
    pub size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TensorsError {
    #[error("the tensors' sizes add up to {declared} bytes, but the frame body has {body}")]
    SizeMismatch { declared: u128, body: usize },
}

/// Each tensor's bytes, sliced out of `body` without copying; the sizes
/// must add up to the body exactly.
pub fn split_tensors(heads: &[TensorHead], body: &Bytes) -> Result<Vec<Bytes>, TensorsError> {
    let declared: u128 = heads.iter().map(|h| u128::from(h.size)).sum();
    if declared != body.len() as u128 {
        return Err(TensorsError::SizeMismatch { declared, body: body.len() });
    }
    let mut at = 0usize;
    let mut parts = Vec::with_capacity(heads.len());
    for h in heads {
        // Fits: the sum of all sizes is the body's length.
        let end = at + h.size as usize;
        parts.push(body.slice(at..end));
        at = end;
    }
    Ok(parts)
}

/// The body of a frame carrying `parts`, in order.
pub fn join_tensors(parts: &[Bytes]) -> Bytes {
    match parts {
        [one] => one.clone(),
        _ => {
            let mut body = Vec::with_capacity(parts.iter().map(Bytes::len).sum());
            for p in parts {
                body.extend_from_slice(p);
            }
            body.into()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn head(size: u64) -> TensorHead {
        TensorHead { name: String::new(), datatype: "UINT8".into(), shape: vec![size], size }
    }

    proptest! {
        #[test]
        fn split_undoes_join(parts in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 0..5)) {
            let parts: Vec<Bytes> = parts.into_iter().map(Bytes::from).collect();
            let heads: Vec<TensorHead> = parts.iter().map(|p| head(p.len() as u64)).collect();
            let body = join_tensors(&parts);
            prop_assert_eq!(split_tensors(&heads, &body).expect("sizes add up"), parts);
        }

        #[test]
        fn sizes_that_do_not_add_up_are_refused(sizes in proptest::collection::vec(any::<u64>(), 0..4), body in 0usize..64) {
            let heads: Vec<TensorHead> = sizes.iter().map(|s| head(*s)).collect();
            let total: u128 = sizes.iter().map(|s| u128::from(*s)).sum();
            let got = split_tensors(&heads, &Bytes::from(vec![0u8; body]));
            prop_assert_eq!(got.is_ok(), total == body as u128);
        }
    }
}
