//! Reading request bodies with a size cap, so an oversized upload is
//! refused as soon as it passes the limit instead of being buffered whole,
//! and within the node-wide budget of body bytes held in memory.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, HttpBody};
use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_stream::StreamExt;

use crate::server::BodyStalled;

pub enum Capped {
    /// The body passed the limit; the size read so far.
    #[allow(dead_code, reason = "the bundle route reports the limit, not the size")]
    Over(u64),
    /// The connection failed while reading.
    Broken(String),
}

/// Reads at most `limit` bytes; a larger body is refused without buffering
/// it, and without reading a byte when its declared length is larger.
pub async fn read_capped(body: Body, limit: u64) -> Result<Vec<u8>, Capped> {
    if let Some(len) = body.size_hint().exact().filter(|n| *n > limit) {
        return Err(Capped::Over(len));
    }
    let mut stream = body.into_data_stream();
    let mut buf = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| Capped::Broken(e.to_string()))?;
        let size = (buf.len() + chunk.len()) as u64;
        if size > limit {
            return Err(Capped::Over(size));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf)
}

/// The bytes of invocation bodies the node holds in memory at once. Without
/// it, each function's `max_body` is bounded but their sum over many
/// clients is not.
#[derive(Clone)]
pub struct BodyMemory {
    bytes: Arc<Semaphore>,
    budget: u64,
}

/// A part of the [`BodyMemory`] budget, given back when dropped (once the
/// invocation that holds the body has ended).
#[derive(Default)]
pub struct Held {
    permit: Option<OwnedSemaphorePermit>,
    bytes: u64,
}

impl BodyMemory {
    pub const DEFAULT: u64 = 256 * 1024 * 1024;

    pub fn new(budget: u64) -> Self {
        let budget = budget.min(Semaphore::MAX_PERMITS as u64);
        Self { bytes: Arc::new(Semaphore::new(budget as usize)), budget }
    }

    pub fn budget(&self) -> u64 {
        self.budget
    }

    /// Grows `held` to `total` bytes, all or nothing, without waiting: a
    /// client is better told to come back than left holding a connection.
    pub fn grow(&self, held: &mut Held, total: u64) -> bool {
        let Some(more) = total.checked_sub(held.bytes).filter(|n| *n > 0) else { return true };
        let Ok(more32) = u32::try_from(more) else { return false };
        let Ok(permit) = self.bytes.clone().try_acquire_many_owned(more32) else { return false };
        match &mut held.permit {
            Some(p) => p.merge(permit),
            None => held.permit = Some(permit),
        }
        held.bytes = total;
        true
    }
}

/// Why an invocation's body could not be read.
pub enum BodyError {
    /// The body passed the function's `max_body`; the size known so far.
    Over(u64),
    /// The node's [`BodyMemory`] is taken by other requests' bodies.
    NoMemory,
    /// The client sent nothing for this long.
    Stalled(Duration),
    /// The connection failed while reading.
    Broken(String),
}

/// Reads at most `limit` bytes into memory taken from `memory` as they
/// arrive (all at once when the length is declared), kept in `held`. A
/// large body is read into a buffer kept from an earlier one
/// (`sedge_core::buffers`), which goes back when the last of its bytes is
/// dropped; a read given up midway drops the buffer with the future.
pub async fn read_body(body: Body, limit: u64, memory: &BodyMemory, held: &mut Held) -> Result<Bytes, BodyError> {
    let declared = body.size_hint().exact();
    if let Some(len) = declared {
        if len > limit {
            return Err(BodyError::Over(len));
        }
        if !memory.grow(held, len) {
            return Err(BodyError::NoMemory);
        }
    }
    let mut stream = body.into_data_stream();
    // A declared length is within max_body and the budget: no reallocation.
    let mut buf = sedge_core::buffers::take(declared.map_or(0, |n| n as usize));
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(read_error)?;
        let size = (buf.len() + chunk.len()) as u64;
        if size > limit {
            return Err(BodyError::Over(size));
        }
        // What the buffer holds is its capacity, not its length: take the
        // doubled capacity from the budget first, then allocate exactly it.
        let need = buf.len() + chunk.len();
        let capacity = if need > buf.capacity() { need.max(buf.capacity() * 2) } else { buf.capacity() };
        if !memory.grow(held, capacity as u64) {
            return Err(BodyError::NoMemory);
        }
        buf.reserve_exact(capacity - buf.len());
        buf.extend_from_slice(&chunk);
    }
    Ok(sedge_core::buffers::shared(buf))
}

fn read_error(e: axum::Error) -> BodyError {
    let inner = e.into_inner();
    match inner.downcast_ref::<BodyStalled>() {
        Some(s) => BodyError::Stalled(s.after),
        None => BodyError::Broken(inner.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_is_taken_all_or_nothing_and_given_back() {
        let memory = BodyMemory::new(100);
        let mut a = Held::default();
        assert!(memory.grow(&mut a, 60));
        assert!(memory.grow(&mut a, 80));
        let mut b = Held::default();
        assert!(!memory.grow(&mut b, 30), "only 20 bytes are left");
        assert!(memory.grow(&mut b, 20));
        drop(a);
        assert!(memory.grow(&mut b, 100));
    }

    #[tokio::test]
    async fn declared_length_over_the_budget_is_refused_before_reading() {
        let memory = BodyMemory::new(10);
        let mut held = Held::default();
        let r = read_body(Body::from(vec![0u8; 11]), 1000, &memory, &mut held).await;
        assert!(matches!(r, Err(BodyError::NoMemory)));
        let r = read_body(Body::from(vec![0u8; 11]), 5, &memory, &mut held).await;
        assert!(matches!(r, Err(BodyError::Over(11))));
        let body = read_body(Body::from(vec![7u8; 10]), 10, &memory, &mut held).await;
        assert!(matches!(body, Ok(b) if b == vec![7u8; 10]));
    }
}
