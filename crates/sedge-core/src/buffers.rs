//! Large byte buffers kept for the next request. With glibc's mmap
//! threshold fixed (`sedge serve` fixes it, so that a burst's memory goes
//! back), every block over 128 KiB is a mapping of its own: a 602 KB
//! request body made in fresh memory costs its 147 pages' faults and the
//! kernel's zeroing of them, each time. A body or frame read into a buffer
//! kept here finds its pages already there.
//!
//! The shelf is bounded ([`MAX_KEPT`] bytes) and forgets what no request
//! took between two [`trim`]s, so a quiet node holds none of it.

use std::sync::Mutex;

use bytes::Bytes;

/// Smaller buffers come from the heap's free lists anyway.
pub const MIN: usize = 128 * 1024;
/// Larger ones are rare enough to be made fresh.
pub const MAX_ONE: usize = 4 * 1024 * 1024;
/// What the shelf holds at most, in bytes of capacity.
pub const MAX_KEPT: usize = 8 * 1024 * 1024;

struct Kept {
    buf: Vec<u8>,
    /// Given back since the last trim.
    fresh: bool,
}

struct Shelf {
    kept: Vec<Kept>,
    bytes: usize,
}

static SHELF: Mutex<Shelf> = Mutex::new(Shelf { kept: Vec::new(), bytes: 0 });

fn shelf() -> std::sync::MutexGuard<'static, Shelf> {
    SHELF.lock().unwrap_or_else(|p| p.into_inner())
}

/// An empty buffer with room for `len` bytes: a kept one when one fits
/// (without being more than twice as large), else a new one.
pub fn take(len: usize) -> Vec<u8> {
    if !(MIN..=MAX_ONE).contains(&len) {
        return Vec::with_capacity(len);
    }
    let mut shelf = shelf();
    let best = shelf
        .kept
        .iter()
        .enumerate()
        .filter(|(_, k)| k.buf.capacity() >= len && k.buf.capacity() / 2 <= len)
        .min_by_key(|(_, k)| k.buf.capacity())
        .map(|(i, _)| i);
    match best {
        Some(i) => {
            let kept = shelf.kept.swap_remove(i);
            shelf.bytes -= kept.buf.capacity();
            kept.buf
        }
        None => Vec::with_capacity(len),
    }
}

/// Keeps `buf` for a later [`take`], when it is worth keeping and the shelf has room.
pub fn give(mut buf: Vec<u8>) {
    let capacity = buf.capacity();
    if !(MIN..=MAX_ONE).contains(&capacity) {
        return;
    }
    let mut shelf = shelf();
    if shelf.bytes + capacity > MAX_KEPT {
        return;
    }
    buf.clear();
    shelf.bytes += capacity;
    shelf.kept.push(Kept { buf, fresh: true });
}

/// Frees what no one took since the last call: called every few seconds,
/// a buffer outlives the load that used it by at most two periods.
pub fn trim() {
    let mut shelf = shelf();
    shelf.kept.retain_mut(|k| std::mem::replace(&mut k.fresh, false));
    shelf.bytes = shelf.kept.iter().map(|k| k.buf.capacity()).sum();
}

/// Bytes in kept buffers now.
pub fn kept_bytes() -> usize {
    shelf().bytes
}

/// `buf` as shared bytes that go back on the shelf when the last of them
/// is dropped, on whatever thread that is.
pub fn shared(buf: Vec<u8>) -> Bytes {
    if buf.capacity() < MIN {
        return Bytes::from(buf);
    }
    Bytes::from_owner(Returned(buf))
}

struct Returned(Vec<u8>);

impl AsRef<[u8]> for Returned {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for Returned {
    fn drop(&mut self) {
        give(std::mem::take(&mut self.0));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // One test: the shelf is the process's, and tests run side by side.
    #[test]
    fn buffers_come_back_are_reused_and_are_forgotten_when_unused() {
        let len = 602_112;
        let mut first = take(len);
        first.extend(std::iter::repeat_n(7u8, len));
        let at = first.as_ptr();
        let bytes = shared(first);
        let part = bytes.slice(10..20);
        drop(bytes);
        assert_eq!(kept_bytes(), 0, "a part still holds it");
        assert_eq!(&part[..], &[7u8; 10]);
        drop(part);
        assert!(kept_bytes() >= len, "back on the shelf with the last part");
        let second = take(len);
        assert_eq!(second.as_ptr(), at, "the same memory again");
        assert!(second.is_empty() && second.capacity() >= len);
        assert_eq!(kept_bytes(), 0);
        // Too small or too large to keep, or more than the shelf holds.
        assert_eq!(shared(vec![1u8; 100]).len(), 100);
        give(Vec::with_capacity(MAX_ONE + 1));
        assert_eq!(kept_bytes(), 0);
        for _ in 0..(MAX_KEPT / MAX_ONE + 1) {
            give(Vec::with_capacity(MAX_ONE));
        }
        assert_eq!(kept_bytes(), MAX_KEPT);
        // A request for a quarter of a kept buffer does not take it.
        assert_ne!(take(MAX_ONE / 4).capacity(), MAX_ONE);
        give(second);
        assert_eq!(kept_bytes(), MAX_KEPT, "no room for it");
        trim();
        assert_eq!(kept_bytes(), MAX_KEPT, "all given back since the last trim");
        trim();
        assert_eq!(kept_bytes(), 0, "none taken since");
        let again = take(len);
        let capacity = again.capacity();
        give(again);
        trim();
        assert_eq!(kept_bytes(), capacity, "given back since");
        trim();
        assert_eq!(kept_bytes(), 0);
    }
}
