//! Reading request bodies with a size cap, so an oversized upload is
//! refused as soon as it passes the limit instead of being buffered whole.

use axum::body::Body;
use tokio_stream::StreamExt;

pub enum Capped {
    /// The body passed the limit; the size read so far.
    Over(u64),
    /// The connection failed while reading.
    Broken(String),
}

/// Reads at most `limit` bytes; a larger body is refused without buffering it.
pub async fn read_capped(body: Body, limit: u64) -> Result<Vec<u8>, Capped> {
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
