//! Receiving a bundle upload: admitted only while fewer than the node's cap
//! are in flight, streamed to a file in the store (never held in memory),
//! refused as soon as it passes the size limit. A refused upload leaves no
//! file behind: the temporary file is removed when dropped.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, HeaderMap, StatusCode};
use sedge_store::TempPath;
use tokio::io::AsyncWriteExt;
use tokio::sync::OwnedSemaphorePermit;
use tokio_stream::StreamExt;

use crate::{blocking, ApiError, Node};

/// A slot among the uploads in flight, or 503 when all are taken.
pub fn admit(node: &Node) -> Result<OwnedSemaphorePermit, ApiError> {
    node.uploads.clone().try_acquire_owned().map_err(|_| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the node is already receiving {} bundle uploads; retry shortly", node.max_uploads),
        )
    })
}

/// How long an upload may take in all: a 512 MiB bundle at 1 MB/s, with room.
const UPLOAD_WITHIN: std::time::Duration = std::time::Duration::from_secs(15 * 60);

fn too_large(limit: u64) -> ApiError {
    ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, format!("bundle is over the node's limit of {limit} bytes"))
}

/// Writes the body to a new file in the store's upload folder.
pub async fn receive(node: &Arc<Node>, headers: &HeaderMap, body: Body) -> Result<TempPath, ApiError> {
    let limit = node.max_bundle as u64;
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large(limit));
    }
    let store = node.store.clone();
    let tmp = blocking(move || Ok(store.upload_file()?)).await?;
    let (file, path) = tmp.into_parts();
    let mut file = tokio::fs::File::from_std(file);
    let mut stream = body.into_data_stream();
    let mut size: u64 = 0;
    let copy = async {
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| ApiError::bad_request(format!("could not read the bundle: {e}")))?;
            size += chunk.len() as u64;
            if size > limit {
                return Err(too_large(limit));
            }
            file.write_all(&chunk).await.map_err(|e| ApiError::internal("writing the upload", e))?;
        }
        file.flush().await.map_err(|e| ApiError::internal("writing the upload", e))
    };
    // Bounds the whole upload, as the progress timeout alone would let a
    // trickling client hold one of the few upload slots for ever.
    tokio::time::timeout(UPLOAD_WITHIN, copy).await.map_err(|_| ApiError::body_late(UPLOAD_WITHIN))??;
    if size == 0 {
        return Err(ApiError::bad_request("empty body: expected a tar.gz of the function's folder"));
    }
    Ok(path)
}
