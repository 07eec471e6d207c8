//! The framed protocol between sedge and a worker process (see
//! `docs/protocol.md`): encode and decode only, no I/O.
//!
//! A frame is an 8-byte prefix (header length, body length; u32 big-endian),
//! a JSON header and raw body bytes. `sedge-runtime` reads and writes frames
//! on a worker's pipes; the runtime shims in `runtimes/` speak the other end.

use bytes::{Buf, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

pub const PREFIX_LEN: usize = 8;
pub const MAX_HEADER: u32 = 1024 * 1024;
pub const MAX_BODY: u32 = 1024 * 1024 * 1024;

/// The JSON header of a frame; `type` tells the kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Header {
    /// sedge → worker: run the handler once; the body is the request body.
    Invoke { id: u64, method: String, path: String, query: String, headers: Vec<(String, String)>, timeout_ms: u64 },
    /// worker → sedge: the user's module is loaded; invocations may come.
    Ready,
    /// worker → sedge: a spare worker (started with `--spare`) is up and
    /// waits for its `load` frame.
    Spare,
    /// sedge → spare worker: become this function.
    Load { dir: String, handler: String, env: std::collections::BTreeMap<String, String> },
    /// worker → sedge: the user's module could not be loaded.
    LoadError { error: String },
    /// worker → sedge: the handler's answer; the body is the answer body.
    Response {
        id: u64,
        status: u16,
        #[serde(default)]
        headers: Vec<(String, String)>,
    },
    /// worker → sedge: the handler raised.
    Error {
        id: u64,
        error: String,
        #[serde(default)]
        trace: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub header: Header,
    pub body: Bytes,
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame header of {0} bytes is over the limit of {MAX_HEADER}")]
    HeaderTooLarge(u32),
    #[error("frame body of {0} bytes is over the limit of {MAX_BODY}")]
    BodyTooLarge(u32),
    #[error("frame header is not valid: {0}")]
    BadHeader(#[from] serde_json::Error),
    #[error("frame of {0} bytes cannot be encoded: over the limits")]
    TooLargeToEncode(usize),
}

/// Lengths announced by a frame's prefix, checked against the limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lengths {
    pub header: u32,
    pub body: u32,
}

pub fn parse_prefix(prefix: [u8; PREFIX_LEN]) -> Result<Lengths, FrameError> {
    let header = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]);
    let body = u32::from_be_bytes([prefix[4], prefix[5], prefix[6], prefix[7]]);
    if header > MAX_HEADER {
        return Err(FrameError::HeaderTooLarge(header));
    }
    if body > MAX_BODY {
        return Err(FrameError::BodyTooLarge(body));
    }
    Ok(Lengths { header, body })
}

pub fn parse_header(bytes: &[u8]) -> Result<Header, FrameError> {
    Ok(serde_json::from_slice(bytes)?)
}

/// Encodes a frame's prefix and header; the body is written after it as is,
/// so a large body is never copied.
pub fn encode_head(header: &Header, body_len: usize) -> Result<Vec<u8>, FrameError> {
    let json = serde_json::to_vec(header)?;
    let (Ok(h), Ok(b)) = (u32::try_from(json.len()), u32::try_from(body_len)) else {
        return Err(FrameError::TooLargeToEncode(json.len().saturating_add(body_len)));
    };
    if h > MAX_HEADER || b > MAX_BODY {
        return Err(FrameError::TooLargeToEncode(json.len() + body_len));
    }
    let mut out = Vec::with_capacity(PREFIX_LEN + json.len());
    out.extend_from_slice(&h.to_be_bytes());
    out.extend_from_slice(&b.to_be_bytes());
    out.extend_from_slice(&json);
    Ok(out)
}

pub fn encode(frame: &Frame) -> Result<Vec<u8>, FrameError> {
    let mut out = encode_head(&frame.header, frame.body.len())?;
    out.extend_from_slice(&frame.body);
    Ok(out)
}

/// Incremental decoder for a byte stream that arrives in arbitrary pieces.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: BytesMut,
}

impl Decoder {
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole frame, `Ok(None)` when more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        let Some(prefix) = self.buf.get(..PREFIX_LEN) else { return Ok(None) };
        let mut p = [0u8; PREFIX_LEN];
        p.copy_from_slice(prefix);
        let lengths = parse_prefix(p)?;
        let total = PREFIX_LEN + lengths.header as usize + lengths.body as usize;
        if self.buf.len() < total {
            return Ok(None);
        }
        self.buf.advance(PREFIX_LEN);
        let header_bytes = self.buf.split_to(lengths.header as usize);
        let body = self.buf.split_to(lengths.body as usize).freeze();
        let header = parse_header(&header_bytes)?;
        Ok(Some(Frame { header, body }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn header_strategy() -> impl Strategy<Value = Header> {
        prop_oneof![
            (
                any::<u64>(),
                "\\PC*",
                "\\PC*",
                "\\PC*",
                proptest::collection::vec(("\\PC*", "\\PC*"), 0..4),
                any::<u64>()
            )
                .prop_map(|(id, method, path, query, headers, timeout_ms)| Header::Invoke {
                    id,
                    method,
                    path,
                    query,
                    headers,
                    timeout_ms
                }),
            Just(Header::Ready),
            Just(Header::Spare),
            ("\\PC*", "\\PC*", proptest::collection::btree_map("\\PC*", "\\PC*", 0..3))
                .prop_map(|(dir, handler, env)| Header::Load { dir, handler, env }),
            "\\PC*".prop_map(|error| Header::LoadError { error }),
            (any::<u64>(), any::<u16>(), proptest::collection::vec(("\\PC*", "\\PC*"), 0..4))
                .prop_map(|(id, status, headers)| Header::Response { id, status, headers }),
            (any::<u64>(), "\\PC*", "\\PC*").prop_map(|(id, error, trace)| Header::Error { id, error, trace }),
        ]
    }

    proptest! {
        #[test]
        fn frames_survive_any_split(
            frames in proptest::collection::vec((header_strategy(), proptest::collection::vec(any::<u8>(), 0..300)), 1..5),
            cut in 1usize..64,
        ) {
            let frames: Vec<Frame> = frames.into_iter().map(|(header, body)| Frame { header, body: body.into() }).collect();
            let mut wire = Vec::new();
            for f in &frames {
                wire.extend(encode(f).expect("encodable"));
            }
            let mut dec = Decoder::default();
            let mut got = Vec::new();
            for chunk in wire.chunks(cut) {
                dec.push(chunk);
                while let Some(f) = dec.next_frame().expect("valid stream") {
                    got.push(f);
                }
            }
            prop_assert_eq!(got, frames);
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut dec = Decoder::default();
            dec.push(&bytes);
            while let Ok(Some(_)) = dec.next_frame() {}
        }
    }

    #[test]
    fn oversized_lengths_are_refused_before_buffering() {
        let mut dec = Decoder::default();
        dec.push(&(MAX_HEADER + 1).to_be_bytes());
        dec.push(&0u32.to_be_bytes());
        assert!(matches!(dec.next_frame(), Err(FrameError::HeaderTooLarge(_))));
    }

    #[test]
    fn wire_format_matches_the_documented_example() {
        let bytes = encode(&Frame { header: Header::Ready, body: Bytes::new() }).expect("encodable");
        assert_eq!(&bytes[..8], &[0, 0, 0, 16, 0, 0, 0, 0]);
        assert_eq!(&bytes[8..], br#"{"type":"ready"}"#);
    }
}
