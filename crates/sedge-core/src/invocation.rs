//! One call of a function, its answer, and the ways a call can fail.

use bytes::Bytes;

/// What reaches a function: the HTTP request minus the gateway's own routing.
#[derive(Debug, Clone, Default)]
pub struct Invocation {
    pub method: String,
    /// The part after `/function/NAME`, always starting with `/`.
    pub path: String,
    /// The raw query string, without `?`.
    pub query: String,
    /// Lower-case names, in arrival order, repeats kept.
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

/// A function's answer.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

/// Why an invocation produced no answer of the function's own. Each kind maps
/// to one HTTP status in the gateway.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvokeError {
    #[error("function {0} not found")]
    NotFound(String),
    #[error("function {function} is busy: its queue of {limit} waiting requests is full")]
    QueueFull { function: String, limit: u32 },
    #[error("function {function} did not answer within {timeout_ms} ms")]
    Timeout { function: String, timeout_ms: u64 },
    #[error("function {function} crashed ({status})")]
    Crashed { function: String, status: String },
    #[error("function {function} failed: {message}")]
    Failed { function: String, message: String },
    #[error("function {function} could not start: {message}")]
    StartFailed { function: String, message: String },
    #[error("request body of {size} bytes is over function {function}'s max_body of {limit} bytes")]
    PayloadTooLarge { function: String, size: u64, limit: u64 },
    #[error("function {function}'s answer{} is over its max_answer of {limit} bytes", size.map(|s| format!(" of {s} bytes")).unwrap_or_default())]
    AnswerTooLarge { function: String, size: Option<u64>, limit: u64 },
    /// The worker was killed by the kernel for going past `[limits] memory`.
    #[error("function {function} exceeded its memory limit of {}", mebibytes(*limit))]
    OutOfMemory { function: String, limit: u64 },
    #[error("function {0} is shutting down")]
    ShuttingDown(String),
}

/// A size as people write it in a manifest: whole MiB when it is one.
pub fn mebibytes(bytes: u64) -> String {
    const MIB: u64 = 1024 * 1024;
    if bytes >= MIB && bytes.is_multiple_of(MIB) {
        format!("{} MiB", bytes / MIB)
    } else {
        format!("{bytes} bytes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_memory_names_the_limit() {
        let e = InvokeError::OutOfMemory { function: "f".into(), limit: 128 * 1024 * 1024 };
        assert_eq!(e.to_string(), "function f exceeded its memory limit of 128 MiB");
        let e = InvokeError::OutOfMemory { function: "f".into(), limit: 1000 };
        assert!(e.to_string().ends_with("limit of 1000 bytes"));
    }
}
