//! Bytes → `sedge_protocol::Decoder`. The first two bytes pick the body
//! limit, the size of the pieces the rest arrives in and from which size
//! a body is read into a buffer of its own. Whatever the
//! bytes, the decoder never panics, and it finds the same frames (and the
//! same first error) whether the stream arrives whole or in pieces; every
//! frame it finds encodes back to a frame that decodes to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sedge_protocol::{encode, Decoded, Decoder};

/// Frames found, then the first error (as text) if any.
fn run(max_body: u32, separate: usize, pieces: &mut dyn Iterator<Item = &[u8]>) -> (Vec<Decoded>, Option<String>) {
    let mut d = Decoder::new(max_body).separate_from(separate);
    let mut found = Vec::new();
    for piece in pieces {
        d.push(piece);
        loop {
            match d.decode() {
                Ok(Some(f)) => found.push(f),
                Ok(None) => break,
                Err(e) => return (found, Some(e.to_string())),
            }
        }
    }
    (found, None)
}

fuzz_target!(|data: &[u8]| {
    let [limit, piece, rest @ ..] = data else { return };
    let max_body = u32::from(*limit) * 4;
    let separate = [usize::MAX, 0, 16, 256][usize::from(*piece / 64)];
    let piece = usize::from(*piece % 64) + 1;
    let whole = run(max_body, separate, &mut std::iter::once(rest));
    let split = run(max_body, separate, &mut rest.chunks(piece));
    assert_eq!(whole, split, "decoding depends on how the bytes arrive");
    for f in whole.0 {
        if let Decoded::Frame(frame) = f {
            let bytes = encode(&frame).expect("a decoded frame encodes");
            let mut d = Decoder::new(max_body);
            d.push(&bytes);
            assert_eq!(d.next_frame().expect("re-decodes"), Some(frame));
        }
    }
});
