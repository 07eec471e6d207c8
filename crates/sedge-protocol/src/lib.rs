//! The framed protocol between sedge and a worker process (see
//! `docs/protocol.md`): encode and decode only, no I/O.
//!
//! A frame is an 8-byte prefix (header length, body length; u32 big-endian),
//! a JSON header and raw body bytes. `sedge-runtime` reads and writes frames
//! on a worker's pipes; the runtime shims in `runtimes/` speak the other end.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

mod tensors;
pub use tensors::{join_tensors, split_tensors, TensorHead, TensorsError};

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
    /// The worker may say where its start went, in microseconds: importing
    /// the module (`imports_us`, model loads excluded) and loading models
    /// (`model_us`, e.g. onnxruntime sessions built while it imported).
    Ready {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        imports_us: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        model_us: Option<u64>,
    },
    /// worker → sedge: a spare worker (started with `--spare`) is up and
    /// waits for its `load` frame.
    Spare,
    /// sedge → spare worker: become this function.
    Load { dir: String, handler: String, env: std::collections::BTreeMap<String, String> },
    /// worker → sedge: the user's module could not be loaded.
    LoadError { error: String },
    /// zygote → sedge: the module is loaded (as in `ready`) and the process
    /// waits for `fork` frames (docs/scaling.md, "Zygotes").
    Zygote {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        imports_us: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        model_us: Option<u64>,
    },
    /// zygote → sedge: the module left something a fork would break
    /// (threads, sockets); the process exits and workers start fresh.
    Unforkable { reason: String },
    /// sedge → zygote: fork a worker. The frame carries three descriptors
    /// (SCM_RIGHTS): the new worker's channel, its stdout and its stderr.
    /// With `warm`, the child runs the module's models once on its own
    /// pages before it says `ready` (a worker made ahead of demand).
    Fork {
        instance: String,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        warm: bool,
    },
    /// zygote → sedge: the worker forked, with its pid as the zygote sees it.
    Forked { pid: u32 },
    /// worker → sedge: the handler's answer; the body is the answer body.
    Response {
        id: u64,
        status: u16,
        #[serde(default)]
        headers: Vec<(String, String)>,
    },
    /// worker → sedge: the handler raised, or its answer could not be sent.
    Error {
        id: u64,
        error: String,
        #[serde(default)]
        trace: String,
        /// Set when the answer was not sent for being over the function's
        /// `max_answer` (`SEDGE_MAX_ANSWER`): its size in bytes.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        answer_size: Option<u64>,
    },
    /// worker → sedge: run a model the node serves, on behalf of the
    /// invocation `call` (whose deadline bounds it). `id` is the worker's
    /// own, unique among its inferences in flight. The body is the inputs'
    /// raw little-endian bytes, one after another in the order of
    /// `inputs`; with `image`, it is a picture for an image model instead.
    Infer {
        id: u64,
        call: u64,
        model: String,
        #[serde(default)]
        inputs: Vec<TensorHead>,
        #[serde(default, skip_serializing_if = "is_false")]
        image: bool,
    },
    /// sedge → worker: the model's outputs, their bytes in the body in the
    /// order of `outputs`; with `json`, the body is the model's JSON answer
    /// (what it answers a picture with) and `outputs` is empty.
    InferResult {
        id: u64,
        #[serde(default)]
        outputs: Vec<TensorHead>,
        #[serde(default, skip_serializing_if = "is_false")]
        json: bool,
    },
    /// sedge → worker: the inference `id` did not happen, and why.
    InferError { id: u64, error: String },
}

fn is_false(b: &bool) -> bool {
    !*b
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
    #[error("frame body of {0} bytes is over this stream's limit of {1}")]
    BodyOverLimit(u32, u32),
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

/// What the decoder found next in the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    Frame(Frame),
    /// A frame whose body is over the decoder's body limit: its header is
    /// known, and its body is being skipped without being buffered.
    Oversized {
        header: Header,
        body_len: u32,
    },
}

/// Incremental decoder for a byte stream that arrives in arbitrary pieces.
/// It holds at most one frame's prefix, header and (limited) body: a body
/// over the limit is skipped as it arrives, so a peer cannot make it buffer
/// more than the limit.
///
/// A large body (from [`sedge_core::buffers::MIN`]) is read into a buffer
/// of its own rather than behind its header: it starts at the allocation's
/// start, so FP32 tensors in it can be read in place, and the buffer is one
/// kept from an earlier frame, so its pages are not faulted in afresh.
#[derive(Debug)]
pub struct Decoder {
    buf: BytesMut,
    max_body: u32,
    /// Bytes of an oversized body still to be thrown away.
    skipping: u64,
    /// The frame whose large body is being read into a buffer of its own.
    body: Option<LargeBody>,
    /// Bodies from this size are read into buffers of their own.
    separate_from: usize,
}

#[derive(Debug)]
struct LargeBody {
    header: Header,
    buf: Vec<u8>,
    len: usize,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new(MAX_BODY)
    }
}

impl Decoder {
    /// A decoder that buffers bodies of up to `max_body` bytes (capped at
    /// the protocol's [`MAX_BODY`]).
    pub fn new(max_body: u32) -> Self {
        Self {
            buf: BytesMut::new(),
            max_body: max_body.min(MAX_BODY),
            skipping: 0,
            body: None,
            separate_from: sedge_core::buffers::MIN,
        }
    }

    /// Reads bodies from `len` bytes into buffers of their own (tests make
    /// small bodies take that way).
    pub fn separate_from(mut self, len: usize) -> Self {
        self.separate_from = len;
        self
    }

    /// Changes the body limit, e.g. once a spare worker learns its function.
    pub fn set_max_body(&mut self, max_body: u32) {
        self.max_body = max_body.min(MAX_BODY);
    }

    /// Whether no bytes of a next frame have arrived.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty() && self.skipping == 0 && self.body.is_none()
    }

    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The buffer to read more bytes into (e.g. with `read_buf`), with room
    /// reserved for the frame being decoded so a large body arrives in few
    /// reads and without reallocation.
    pub fn buffer(&mut self) -> &mut (dyn BufMut + Send) {
        if self.body.is_some() {
            return self.body_buffer();
        }
        let want = match self.peek_lengths() {
            Some(Ok(l)) if l.body <= self.max_body && (l.body as usize) < self.separate_from => {
                PREFIX_LEN + l.header as usize + l.body as usize
            }
            Some(Ok(l)) => PREFIX_LEN + l.header as usize,
            _ => PREFIX_LEN,
        };
        let want = want.saturating_sub(self.buf.len()).max(64 * 1024);
        self.buf.reserve(want);
        &mut self.buf
    }

    /// The large body's own buffer, reserved whole when the body began; a
    /// read may run past the body into the next frame, which decode() moves
    /// back behind it.
    fn body_buffer(&mut self) -> &mut (dyn BufMut + Send) {
        match &mut self.body {
            Some(body) => {
                if body.buf.len() == body.buf.capacity() {
                    body.buf.reserve(PREFIX_LEN);
                }
                &mut body.buf
            }
            None => &mut self.buf,
        }
    }

    fn peek_lengths(&self) -> Option<Result<Lengths, FrameError>> {
        if self.skipping > 0 {
            return None;
        }
        let prefix = self.buf.get(..PREFIX_LEN)?;
        let mut p = [0u8; PREFIX_LEN];
        p.copy_from_slice(prefix);
        Some(parse_prefix(p))
    }

    /// The large body being read, once whole, as its frame.
    fn large_body(&mut self) -> Option<Frame> {
        let body = self.body.as_mut()?;
        if body.buf.len() > body.len {
            // Read past the body: those bytes begin the next frame.
            let extra = body.buf.split_off(body.len);
            let rest = self.buf.split();
            self.buf.extend_from_slice(&extra);
            self.buf.extend_from_slice(&rest);
        }
        let missing = body.len - body.buf.len();
        if missing > 0 {
            let n = missing.min(self.buf.len());
            body.buf.extend_from_slice(&self.buf.split_to(n));
        }
        if body.buf.len() < body.len {
            return None;
        }
        let LargeBody { header, buf, .. } = self.body.take()?;
        Some(Frame { header, body: sedge_core::buffers::shared(buf) })
    }

    /// The next whole frame, or the header of an oversized one; `Ok(None)`
    /// when more bytes are needed. After an error the stream is unusable.
    pub fn decode(&mut self) -> Result<Option<Decoded>, FrameError> {
        if self.body.is_some() {
            return Ok(self.large_body().map(Decoded::Frame));
        }
        if self.skipping > 0 {
            let n = self.buf.len().min(usize::try_from(self.skipping).unwrap_or(usize::MAX));
            self.buf.advance(n);
            self.skipping -= n as u64;
            if self.skipping > 0 {
                return Ok(None);
            }
        }
        let Some(lengths) = self.peek_lengths() else { return Ok(None) };
        let lengths = lengths?;
        let head = PREFIX_LEN + lengths.header as usize;
        if lengths.body > self.max_body {
            if self.buf.len() < head {
                return Ok(None);
            }
            self.buf.advance(PREFIX_LEN);
            let header = parse_header(&self.buf.split_to(lengths.header as usize))?;
            self.skipping = u64::from(lengths.body);
            return Ok(Some(Decoded::Oversized { header, body_len: lengths.body }));
        }
        if lengths.body as usize >= self.separate_from {
            if self.buf.len() < head {
                return Ok(None);
            }
            self.buf.advance(PREFIX_LEN);
            let header = parse_header(&self.buf.split_to(lengths.header as usize))?;
            let len = lengths.body as usize;
            self.body = Some(LargeBody { header, buf: sedge_core::buffers::take(len), len });
            return Ok(self.large_body().map(Decoded::Frame));
        }
        if self.buf.len() < head + lengths.body as usize {
            return Ok(None);
        }
        self.buf.advance(PREFIX_LEN);
        let header_bytes = self.buf.split_to(lengths.header as usize);
        let body = self.buf.split_to(lengths.body as usize).freeze();
        let header = parse_header(&header_bytes)?;
        Ok(Some(Decoded::Frame(Frame { header, body })))
    }

    /// Like [`Self::decode`], for callers that treat an oversized body as an error.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        match self.decode()? {
            Some(Decoded::Frame(f)) => Ok(Some(f)),
            Some(Decoded::Oversized { body_len, .. }) => Err(FrameError::BodyOverLimit(body_len, self.max_body)),
            None => Ok(None),
        }
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
            (proptest::option::of(0u64..1 << 40), proptest::option::of(0u64..1 << 40))
                .prop_map(|(imports_us, model_us)| Header::Ready { imports_us, model_us }),
            Just(Header::Spare),
            ("\\PC*", "\\PC*", proptest::collection::btree_map("\\PC*", "\\PC*", 0..3))
                .prop_map(|(dir, handler, env)| Header::Load { dir, handler, env }),
            "\\PC*".prop_map(|error| Header::LoadError { error }),
            "\\PC*".prop_map(|reason| Header::Unforkable { reason }),
            ("\\PC*", any::<bool>()).prop_map(|(instance, warm)| Header::Fork { instance, warm }),
            any::<u32>().prop_map(|pid| Header::Forked { pid }),
            (any::<u64>(), any::<u16>(), proptest::collection::vec(("\\PC*", "\\PC*"), 0..4))
                .prop_map(|(id, status, headers)| Header::Response { id, status, headers }),
            (any::<u64>(), "\\PC*", "\\PC*", proptest::option::of(any::<u64>()))
                .prop_map(|(id, error, trace, answer_size)| Header::Error { id, error, trace, answer_size }),
            (any::<u64>(), any::<u64>(), "\\PC*", proptest::collection::vec(tensor_head(), 0..3), any::<bool>())
                .prop_map(|(id, call, model, inputs, image)| Header::Infer { id, call, model, inputs, image }),
            (any::<u64>(), proptest::collection::vec(tensor_head(), 0..3), any::<bool>())
                .prop_map(|(id, outputs, json)| Header::InferResult { id, outputs, json }),
            (any::<u64>(), "\\PC*").prop_map(|(id, error)| Header::InferError { id, error }),
        ]
    }

    fn tensor_head() -> impl Strategy<Value = TensorHead> {
        ("\\PC*", "\\PC*", proptest::collection::vec(any::<u64>(), 0..4), any::<u64>())
            .prop_map(|(name, datatype, shape, size)| TensorHead { name, datatype, shape, size })
    }

    proptest! {
        #[test]
        fn frames_survive_any_split(
            frames in proptest::collection::vec((header_strategy(), proptest::collection::vec(any::<u8>(), 0..300)), 1..5),
            cut in 1usize..64,
            separate in prop_oneof![Just(usize::MAX), 0usize..300],
        ) {
            let frames: Vec<Frame> = frames.into_iter().map(|(header, body)| Frame { header, body: body.into() }).collect();
            let mut wire = Vec::new();
            for f in &frames {
                wire.extend(encode(f).expect("encodable"));
            }
            let mut dec = Decoder::default().separate_from(separate);
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
        fn oversized_bodies_are_skipped_and_later_frames_survive(
            frames in proptest::collection::vec((header_strategy(), proptest::collection::vec(any::<u8>(), 0..300)), 1..6),
            limit in 0u32..200,
            cut in 1usize..64,
        ) {
            let frames: Vec<Frame> = frames.into_iter().map(|(header, body)| Frame { header, body: body.into() }).collect();
            let mut wire = Vec::new();
            for f in &frames {
                wire.extend(encode(f).expect("encodable"));
            }
            let expected: Vec<Decoded> = frames.iter().map(|f| {
                if f.body.len() as u32 > limit {
                    Decoded::Oversized { header: f.header.clone(), body_len: f.body.len() as u32 }
                } else {
                    Decoded::Frame(f.clone())
                }
            }).collect();
            let mut dec = Decoder::new(limit);
            let mut got = Vec::new();
            for chunk in wire.chunks(cut) {
                dec.push(chunk);
                while let Some(d) = dec.decode().expect("valid stream") {
                    got.push(d);
                }
                // Never more than one frame's head plus the limit, plus what one push brought.
                prop_assert!(dec.buf.len() <= PREFIX_LEN + MAX_HEADER as usize + limit as usize + cut);
            }
            prop_assert_eq!(got, expected);
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut dec = Decoder::default();
            dec.push(&bytes);
            while let Ok(Some(_)) = dec.next_frame() {}
        }
    }

    /// Reads `wire` as a socket would give it, `step` bytes at most a read,
    /// into what [`Decoder::buffer`] offers.
    fn read_all(dec: &mut Decoder, wire: &[u8], step: usize) -> Vec<Frame> {
        let mut at = 0;
        let mut got = Vec::new();
        loop {
            while let Some(f) = dec.next_frame().expect("valid stream") {
                got.push(f);
            }
            if at == wire.len() {
                return got;
            }
            let into = dec.buffer();
            let n = step.min(wire.len() - at).min(into.remaining_mut());
            into.put_slice(&wire[at..at + n]);
            at += n;
        }
    }

    proptest! {
        #[test]
        fn reads_into_the_offered_buffer_give_the_frames_back(
            frames in proptest::collection::vec((header_strategy(), proptest::collection::vec(any::<u8>(), 0..300)), 1..5),
            step in 1usize..700,
            separate in 0usize..300,
        ) {
            let frames: Vec<Frame> = frames.into_iter().map(|(header, body)| Frame { header, body: body.into() }).collect();
            let mut wire = Vec::new();
            for f in &frames {
                wire.extend(encode(f).expect("encodable"));
            }
            let mut dec = Decoder::default().separate_from(separate);
            prop_assert_eq!(read_all(&mut dec, &wire, step), frames);
            prop_assert!(dec.is_empty());
        }
    }

    #[test]
    fn a_large_body_starts_its_own_buffer_which_is_kept_for_the_next() {
        let len = sedge_core::buffers::MIN * 4 + 3;
        let frame = |n: u8| Frame {
            header: Header::Infer {
                id: u64::from(n),
                call: 1,
                model: "m".repeat(usize::from(n)),
                inputs: vec![],
                image: false,
            },
            body: vec![n; len].into(),
        };
        let mut wire = encode(&frame(1)).expect("encodable");
        wire.extend(encode(&frame(2)).expect("encodable"));
        let mut dec = Decoder::default();
        // Reads of 200 KB, as a Unix socket gives them, run past the first body.
        let got = read_all(&mut dec, &wire, 200 * 1024);
        assert_eq!(got, [frame(1), frame(2)]);
        for f in &got {
            assert_eq!(
                f.body.as_ptr() as usize % std::mem::align_of::<f32>(),
                0,
                "an f32's address, whatever the header"
            );
        }
        let before: Vec<*const u8> = got.iter().map(|f| f.body.as_ptr()).collect();
        drop(got);
        // The next large body is read into memory given back by the last ones.
        let again = read_all(&mut dec, &encode(&frame(3)).expect("encodable"), 200 * 1024);
        assert!(before.contains(&again[0].body.as_ptr()), "a kept buffer was taken");
        assert_eq!(again, [frame(3)]);
    }

    #[test]
    fn oversized_lengths_are_refused_before_buffering() {
        let mut dec = Decoder::default();
        dec.push(&(MAX_HEADER + 1).to_be_bytes());
        dec.push(&0u32.to_be_bytes());
        assert!(matches!(dec.next_frame(), Err(FrameError::HeaderTooLarge(_))));
    }

    #[test]
    fn infer_frames_read_as_documented() {
        let text = r#"{"type":"infer","id":1,"call":7,"model":"digits","inputs":[{"name":"pixels","datatype":"FP32","shape":[1,64],"size":256}]}"#;
        let Header::Infer { id, call, model, inputs, image } = parse_header(text.as_bytes()).expect("valid") else {
            panic!("not an infer frame")
        };
        assert_eq!((id, call, model.as_str(), image), (1, 7, "digits", false));
        assert_eq!(
            inputs[0],
            TensorHead { name: "pixels".into(), datatype: "FP32".into(), shape: vec![1, 64], size: 256 }
        );
        let image = r#"{"type":"infer","id":2,"call":7,"model":"effnet","image":true}"#;
        assert!(matches!(parse_header(image.as_bytes()), Ok(Header::Infer { image: true, .. })));
        let done = Header::InferResult { id: 2, outputs: vec![], json: true };
        assert_eq!(
            serde_json::to_string(&done).expect("encodes"),
            r#"{"type":"infer_result","id":2,"outputs":[],"json":true}"#
        );
        let failed = Header::InferError { id: 3, error: "no".into() };
        assert_eq!(serde_json::to_string(&failed).expect("encodes"), r#"{"type":"infer_error","id":3,"error":"no"}"#);
    }

    #[test]
    fn wire_format_matches_the_documented_example() {
        let bytes = encode(&Frame { header: Header::Ready { imports_us: None, model_us: None }, body: Bytes::new() })
            .expect("encodable");
        assert_eq!(&bytes[..8], &[0, 0, 0, 16, 0, 0, 0, 0]);
        assert_eq!(&bytes[8..], br#"{"type":"ready"}"#);
    }
}
