//! A forwarded call and its answer on the wire: a 4-byte big-endian length,
//! that many bytes of JSON (the request's line and headers, or the
//! answer's status and headers), then the body as it is. A body too large
//! for one NATS message travels in the object store instead, named in the
//! JSON; the receiver reads and deletes it.

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallMeta {
    /// Names the call for a cancel message.
    pub id: String,
    pub function: String,
    pub method: String,
    pub path: String,
    pub query: String,
    pub headers: Vec<(String, String)>,
    /// Time left to the caller's deadline when sent.
    pub timeout_ms: u64,
    /// The node that sent it.
    pub from: String,
    /// The body is this object in the bodies bucket, not the message's tail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
}

impl CallMeta {
    /// The header of `inv` sent on to `function`, with its body apart (the
    /// message's tail, or an object when it does not fit).
    pub fn of(
        id: String,
        function: &str,
        inv: sedge_core::Invocation,
        timeout: std::time::Duration,
        from: &str,
    ) -> (Self, Bytes) {
        let meta = CallMeta {
            id,
            function: function.to_owned(),
            method: inv.method,
            path: inv.path,
            query: inv.query,
            headers: inv.headers,
            timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
            from: from.to_owned(),
            object: None,
        };
        (meta, inv.body)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnswerMeta {
    /// The node that answered.
    pub node: String,
    /// The node had no room: ask another.
    #[serde(default)]
    pub busy: bool,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("a forwarded message of {0} bytes is shorter than its header says")]
    Short(usize),
    #[error("a forwarded message's header is not valid: {0}")]
    Json(String),
}

pub fn encode<T: Serialize>(meta: &T, body: &[u8]) -> Bytes {
    let json = serde_json::to_vec(meta).unwrap_or_default();
    let mut out = BytesMut::with_capacity(4 + json.len() + body.len());
    out.put_u32(json.len() as u32);
    out.put_slice(&json);
    out.put_slice(body);
    out.freeze()
}

pub fn decode<T: for<'de> Deserialize<'de>>(message: &Bytes) -> Result<(T, Bytes), WireError> {
    if message.len() < 4 {
        return Err(WireError::Short(message.len()));
    }
    let n = u32::from_be_bytes([message[0], message[1], message[2], message[3]]) as usize;
    let end = 4usize.checked_add(n).filter(|e| *e <= message.len()).ok_or(WireError::Short(message.len()))?;
    let meta = serde_json::from_slice(&message[4..end]).map_err(|e| WireError::Json(e.to_string()))?;
    Ok((meta, message.slice(end..)))
}

/// Whether a body of `len` bytes with its header fits a message under the
/// server's `max_payload` (with room for the header and NATS's own).
pub fn fits(len: usize, header: usize, max_payload: usize) -> bool {
    len.saturating_add(header).saturating_add(4 + 1024) <= max_payload
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> CallMeta {
        CallMeta {
            id: "c1".into(),
            function: "hello".into(),
            method: "POST".into(),
            path: "/x".into(),
            query: "a=1".into(),
            headers: vec![("content-type".into(), "text/plain".into()), ("x-a".into(), "1".into())],
            timeout_ms: 5000,
            from: "n1".into(),
            object: None,
        }
    }

    #[test]
    fn a_call_comes_back_as_sent_with_any_body() {
        for body in [&b""[..], b"hello", &[0u8, 255, 4, 0, 0, 0][..]] {
            let wire = encode(&meta(), body);
            let (back, rest): (CallMeta, Bytes) = decode(&wire).expect("decodes");
            assert_eq!(back, meta());
            assert_eq!(&rest[..], body);
        }
    }

    #[test]
    fn truncated_or_garbled_messages_are_refused_not_panicked_on() {
        let wire = encode(&meta(), b"body");
        for cut in [0, 3, 4, 10, 20] {
            let short = wire.slice(..cut);
            assert!(decode::<CallMeta>(&short).is_err(), "cut at {cut}");
        }
        let mut bad = BytesMut::new();
        bad.put_u32(3);
        bad.put_slice(b"{x}");
        assert!(matches!(decode::<CallMeta>(&bad.freeze()), Err(WireError::Json(_))));
        assert!(matches!(decode::<CallMeta>(&Bytes::from_static(&[255, 255, 255, 255, 1])), Err(WireError::Short(5))));
    }

    #[test]
    fn large_bodies_do_not_fit_one_message() {
        assert!(fits(600 * 1024, 200, 1024 * 1024));
        assert!(!fits(1024 * 1024, 200, 1024 * 1024));
    }
}
