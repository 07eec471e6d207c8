//! The calls in SQLite (`DATA/calls.db`, WAL): a call is committed and
//! synced to disk before its caller hears it was accepted.
//!
//! Two connections: submissions go through one with `synchronous = FULL`
//! (each commit reaches the disk before it returns); state changes after
//! that go through one with `NORMAL`, which in WAL mode can lose the last
//! commits on power loss but never corrupts. Losing a state change only
//! moves a call back to an earlier state (running → queued), so it runs
//! again: at least once, never lost.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use rusqlite::{params, Connection, OptionalExtension, Row, TransactionBehavior};
use serde::Serialize;

use crate::retention::{self, Retention};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("call store: {0}")]
    Db(#[from] rusqlite::Error),
    #[error("call store {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("call id {0:?} is already used by a call of another function")]
    IdTaken(String),
    #[error("call {0} not found")]
    NotFound(String),
    /// SQLite could not write: the disk filled up after the free-space check.
    #[error("the node's disk is full; try again later")]
    Full,
    #[error("call {id} is {state}; only finished (done or failed) calls can be retried")]
    NotFinished { id: String, state: &'static str },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CallState {
    Queued,
    Running,
    Done,
    /// Gave up: the dead-letter list.
    Failed,
}

impl CallState {
    pub const ALL: [CallState; 4] = [Self::Queued, Self::Running, Self::Done, Self::Failed];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Done => "done",
            Self::Failed => "failed",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

/// How a call came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CallKind {
    /// `/async-function/NAME`.
    Http,
    /// `/system/tasks`.
    Task,
}

impl CallKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Task => "task",
        }
    }
}

/// The request as it will reach the function: the invocation itself, kept
/// as it arrived.
pub type Request = sedge_core::Invocation;

#[derive(Debug, Clone)]
pub struct NewCall {
    pub function: String,
    pub kind: CallKind,
    /// The caller's own id (`X-Call-Id`); one is made up without it.
    pub id: Option<String>,
    /// The caller's idempotency key, unique per function.
    pub key: Option<String>,
    pub request: Request,
    pub callback_url: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub id: String,
    /// The id or key was seen before: nothing new was queued.
    pub duplicate: bool,
}

/// Whether the callback has been delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CallbackState {
    /// No callback URL, or the call has not finished.
    None,
    Pending,
    Delivered,
    Failed,
}

impl CallbackState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Pending => "pending",
            Self::Delivered => "delivered",
            Self::Failed => "failed",
        }
    }

    pub fn parse(text: &str) -> Self {
        match text {
            "pending" => Self::Pending,
            "delivered" => Self::Delivered,
            "failed" => Self::Failed,
            _ => Self::None,
        }
    }
}

/// A stored call, whole.
#[derive(Debug, Clone)]
pub struct Call {
    pub id: String,
    pub seq: i64,
    pub function: String,
    pub kind: CallKind,
    pub state: CallState,
    pub attempts: u32,
    pub request: Request,
    pub callback_url: Option<String>,
    pub accepted_ms: i64,
    /// When it was last queued afresh (accepted, or retried by hand): its
    /// age for `max_age` counts from here.
    pub queued_ms: i64,
    pub not_before_ms: i64,
    pub started_ms: Option<i64>,
    pub finished_ms: Option<i64>,
    /// The last attempt's answer (or the node's status for a failure).
    pub status: Option<u16>,
    pub reply_headers: Vec<(String, String)>,
    pub reply_body: Option<Bytes>,
    pub error: Option<String>,
    pub duration_ms: Option<i64>,
    pub callback: CallbackState,
    pub callback_attempts: u32,
    pub callback_error: Option<String>,
    /// The node that ran the last attempt, in a cluster (one node: `None`).
    pub node: Option<String>,
}

/// How an attempt is recorded.
#[derive(Debug, Clone)]
pub enum Finish {
    /// Finished: done if `failed` is `None`, else dead-lettered with the reason.
    Final { status: u16, headers: Vec<(String, String)>, body: Bytes, error: Option<String>, duration_ms: i64 },
    /// Queued again, to run no earlier than `not_before_ms`.
    Retry { not_before_ms: i64, status: u16, error: String },
}

/// Which calls a listing or a purge covers.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub function: Option<String>,
    pub state: Option<CallState>,
    pub limit: Option<u32>,
}

/// Calls per function and state, for the metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    pub function: String,
    pub queued: u64,
    pub running: u64,
    pub done: u64,
    pub failed: u64,
    /// When the oldest call still queued was queued.
    pub oldest_queued_ms: Option<i64>,
}

pub struct CallStore {
    accept: Mutex<Connection>,
    work: Mutex<Connection>,
    path: PathBuf,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS calls (
    seq               INTEGER PRIMARY KEY AUTOINCREMENT,
    id                TEXT NOT NULL UNIQUE,
    function          TEXT NOT NULL,
    kind              TEXT NOT NULL,
    idem_key          TEXT,
    method            TEXT NOT NULL,
    path              TEXT NOT NULL,
    query             TEXT NOT NULL,
    headers           TEXT NOT NULL,
    body              BLOB NOT NULL,
    callback_url      TEXT,
    state             TEXT NOT NULL,
    attempts          INTEGER NOT NULL DEFAULT 0,
    accepted_ms       INTEGER NOT NULL,
    queued_ms         INTEGER NOT NULL,
    not_before_ms     INTEGER NOT NULL,
    started_ms        INTEGER,
    finished_ms       INTEGER,
    status            INTEGER,
    reply_headers     TEXT,
    reply_body        BLOB,
    error             TEXT,
    duration_ms       INTEGER,
    callback_state    TEXT NOT NULL DEFAULT 'none',
    callback_attempts INTEGER NOT NULL DEFAULT 0,
    callback_next_ms  INTEGER,
    callback_error    TEXT,
    size              INTEGER NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS calls_key ON calls(function, idem_key) WHERE idem_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS calls_ready ON calls(state, function, not_before_ms, seq);
CREATE INDEX IF NOT EXISTS calls_callbacks ON calls(callback_state, callback_next_ms);
CREATE INDEX IF NOT EXISTS calls_finished ON calls(finished_ms) WHERE finished_ms IS NOT NULL;
";

const COLUMNS: &str = "id, seq, function, kind, state, attempts, method, path, query, headers, body, callback_url, \
    accepted_ms, queued_ms, not_before_ms, started_ms, finished_ms, status, reply_headers, reply_body, error, \
    duration_ms, callback_state, callback_attempts, callback_error";

fn open_connection(path: &Path, synchronous: &str) -> Result<Connection, StoreError> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.execute_batch(&format!("PRAGMA journal_mode = WAL; PRAGMA synchronous = {synchronous};"))?;
    Ok(conn)
}

fn lock(m: &Mutex<Connection>) -> MutexGuard<'_, Connection> {
    // Transactions roll back on a panic, so a poisoned lock is still sound.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn headers_json(headers: &[(String, String)]) -> String {
    serde_json::to_string(headers).unwrap_or_else(|_| "[]".into())
}

fn headers_from(text: Option<String>) -> Vec<(String, String)> {
    text.and_then(|t| serde_json::from_str(&t).ok()).unwrap_or_default()
}

fn to_u32(n: i64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn row_call(row: &Row<'_>) -> rusqlite::Result<Call> {
    let kind: String = row.get(3)?;
    let state: String = row.get(4)?;
    let body: Vec<u8> = row.get(10)?;
    let reply: Option<Vec<u8>> = row.get(19)?;
    let status: Option<i64> = row.get(17)?;
    Ok(Call {
        id: row.get(0)?,
        seq: row.get(1)?,
        function: row.get(2)?,
        kind: if kind == "task" { CallKind::Task } else { CallKind::Http },
        state: CallState::parse(&state).unwrap_or(CallState::Queued),
        attempts: to_u32(row.get(5)?),
        request: Request {
            method: row.get(6)?,
            path: row.get(7)?,
            query: row.get(8)?,
            headers: headers_from(row.get(9)?),
            body: body.into(),
        },
        callback_url: row.get(11)?,
        accepted_ms: row.get(12)?,
        queued_ms: row.get(13)?,
        not_before_ms: row.get(14)?,
        started_ms: row.get(15)?,
        finished_ms: row.get(16)?,
        status: status.and_then(|s| u16::try_from(s).ok()),
        reply_headers: headers_from(row.get(18)?),
        reply_body: reply.map(Bytes::from),
        error: row.get(20)?,
        duration_ms: row.get(21)?,
        callback: CallbackState::parse(&row.get::<_, String>(22)?),
        callback_attempts: to_u32(row.get(23)?),
        callback_error: row.get(24)?,
        node: None,
    })
}

/// A new call id: 128 random bits in the UUID text form, as OpenFaaS's are.
pub fn new_id() -> String {
    let mut b = [0u8; 16];
    if getrandom::fill(&mut b).is_err() {
        // No entropy source: unique enough from the clock and a counter.
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        b[..8].copy_from_slice(&(now.as_nanos() as u64).to_le_bytes());
        b[8..].copy_from_slice(&COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed).to_le_bytes());
    }
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

impl StoreError {
    /// The same error, for one more of the submissions a failed group commit covered.
    pub fn again(&self) -> StoreError {
        match self {
            Self::Db(e) if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull) => Self::Full,
            Self::Full => Self::Full,
            other => Self::Io { path: PathBuf::new(), source: std::io::Error::other(other.to_string()) },
        }
    }
}

impl CallStore {
    /// Opens (creating if needed) the call store at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let accept = open_connection(path, "FULL")?;
        accept.execute_batch(SCHEMA)?;
        let work = open_connection(path, "NORMAL")?;
        Ok(Self { accept: Mutex::new(accept), work: Mutex::new(work), path: path.to_owned() })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stores `calls` in one transaction, synced before it returns; each
    /// gets its id, or the id of the call it duplicates. A failure stores none.
    pub fn insert(&self, calls: &[NewCall], now_ms: i64) -> Result<Vec<Result<Accepted, StoreError>>, StoreError> {
        let mut conn = lock(&self.accept);
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut out = Vec::with_capacity(calls.len());
        for call in calls {
            out.push(insert_one(&tx, call, now_ms)?);
        }
        tx.commit()?;
        Ok(out)
    }

    /// Calls left running by a node that stopped (or was killed) go back
    /// to the queue: they run again.
    pub fn requeue_running(&self) -> Result<usize, StoreError> {
        let conn = lock(&self.work);
        Ok(conn.execute("UPDATE calls SET state = 'queued' WHERE state = 'running'", [])?)
    }

    /// Functions with a queued call, due or not (read once at start; the
    /// queue keeps the set up to date after that).
    pub fn queued_functions(&self) -> Result<Vec<String>, StoreError> {
        let conn = lock(&self.work);
        let mut stmt = conn.prepare_cached("SELECT DISTINCT function FROM calls WHERE state = 'queued'")?;
        let rows = stmt.query_map([], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// When `function`'s next queued call not due by `now_ms` is due. One
    /// index seek, however long the queue.
    pub fn next_due(&self, function: &str, now_ms: i64) -> Result<Option<i64>, StoreError> {
        let conn = lock(&self.work);
        let mut stmt = conn.prepare_cached(
            "SELECT MIN(not_before_ms) FROM calls WHERE state = 'queued' AND function = ?1 AND not_before_ms > ?2",
        )?;
        Ok(stmt.query_row(params![function, now_ms], |r| r.get(0))?)
    }

    /// Whether `function` has any queued call.
    pub fn has_queued(&self, function: &str) -> Result<bool, StoreError> {
        let conn = lock(&self.work);
        let mut stmt =
            conn.prepare_cached("SELECT EXISTS (SELECT 1 FROM calls WHERE state = 'queued' AND function = ?1)")?;
        Ok(stmt.query_row([function], |r| r.get(0))?)
    }

    /// Marks up to `n` of `function`'s due calls running, in arrival
    /// order, and returns them with their attempt counted.
    pub fn claim(&self, function: &str, n: u32, now_ms: i64) -> Result<Vec<Call>, StoreError> {
        let mut conn = lock(&self.work);
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let calls = {
            let mut stmt = tx.prepare_cached(&format!(
                "UPDATE calls SET state = 'running', attempts = attempts + 1, started_ms = ?3 \
                 WHERE seq IN (SELECT seq FROM calls WHERE state = 'queued' AND function = ?1 AND not_before_ms <= ?3 \
                 ORDER BY seq LIMIT ?2) RETURNING {COLUMNS}"
            ))?;
            let rows = stmt.query_map(params![function, n, now_ms], row_call)?;
            let mut calls: Vec<Call> = rows.collect::<Result<_, _>>()?;
            calls.sort_by_key(|c| c.seq);
            calls
        };
        tx.commit()?;
        Ok(calls)
    }

    /// Records how an attempt of running call `id` ended.
    pub fn finish(&self, id: &str, finish: &Finish, now_ms: i64) -> Result<(), StoreError> {
        let conn = lock(&self.work);
        match finish {
            Finish::Final { status, headers, body, error, duration_ms } => {
                let state = if error.is_some() { "failed" } else { "done" };
                conn.execute(
                    "UPDATE calls SET state = ?2, finished_ms = ?3, status = ?4, reply_headers = ?5, reply_body = ?6, \
                     error = ?7, duration_ms = ?8, size = length(body) + ?9, \
                     callback_state = CASE WHEN callback_url IS NULL THEN 'none' ELSE 'pending' END, \
                     callback_attempts = 0, callback_next_ms = ?3, callback_error = NULL \
                     WHERE id = ?1 AND state = 'running'",
                    params![
                        id,
                        state,
                        now_ms,
                        status,
                        headers_json(headers),
                        body.as_ref(),
                        error,
                        duration_ms,
                        body.len()
                    ],
                )?;
            }
            Finish::Retry { not_before_ms, status, error } => {
                conn.execute(
                    "UPDATE calls SET state = 'queued', not_before_ms = ?2, status = ?3, error = ?4 \
                     WHERE id = ?1 AND state = 'running'",
                    params![id, not_before_ms, status, error],
                )?;
            }
        }
        Ok(())
    }

    /// Puts a running call back without counting the attempt (the node is stopping).
    pub fn release(&self, id: &str) -> Result<(), StoreError> {
        let conn = lock(&self.work);
        conn.execute(
            "UPDATE calls SET state = 'queued', attempts = MAX(attempts - 1, 0) WHERE id = ?1 AND state = 'running'",
            [id],
        )?;
        Ok(())
    }

    /// Finished calls whose callback is due by `now_ms`, oldest first.
    pub fn due_callbacks(&self, now_ms: i64, limit: u32, skip: &[String]) -> Result<Vec<Call>, StoreError> {
        let conn = lock(&self.work);
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM calls WHERE callback_state = 'pending' AND callback_next_ms <= ?1 \
             ORDER BY callback_next_ms, seq LIMIT ?2"
        ))?;
        let rows = stmt.query_map(params![now_ms, limit + skip.len() as u32], row_call)?;
        let mut calls: Vec<Call> = rows.collect::<Result<_, _>>()?;
        calls.retain(|c| !skip.contains(&c.id));
        calls.truncate(limit as usize);
        Ok(calls)
    }

    /// When the next pending callback not due yet is due.
    pub fn next_callback(&self, now_ms: i64) -> Result<Option<i64>, StoreError> {
        let conn = lock(&self.work);
        Ok(conn.query_row(
            "SELECT MIN(callback_next_ms) FROM calls WHERE callback_state = 'pending' AND callback_next_ms > ?1",
            [now_ms],
            |r| r.get(0),
        )?)
    }

    /// Records a callback attempt: delivered, to be tried again at
    /// `retry_at`, or (neither) given up, with the error.
    pub fn callback_attempt(
        &self,
        id: &str,
        delivered: bool,
        retry_at: Option<i64>,
        error: Option<&str>,
    ) -> Result<(), StoreError> {
        let state = match (delivered, retry_at) {
            (true, _) => CallbackState::Delivered,
            (false, Some(_)) => CallbackState::Pending,
            (false, None) => CallbackState::Failed,
        };
        let conn = lock(&self.work);
        conn.execute(
            "UPDATE calls SET callback_state = ?2, callback_attempts = callback_attempts + 1, \
             callback_next_ms = ?3, callback_error = ?4 WHERE id = ?1 AND callback_state = 'pending'",
            params![id, state.as_str(), retry_at, error],
        )?;
        Ok(())
    }

    pub fn get(&self, id: &str) -> Result<Option<Call>, StoreError> {
        let conn = lock(&self.work);
        let mut stmt = conn.prepare_cached(&format!("SELECT {COLUMNS} FROM calls WHERE id = ?1"))?;
        Ok(stmt.query_row([id], row_call).optional()?)
    }

    /// Calls by arrival, newest first.
    pub fn list(&self, filter: &Filter) -> Result<Vec<Call>, StoreError> {
        let conn = lock(&self.work);
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM calls WHERE (?1 IS NULL OR function = ?1) AND (?2 IS NULL OR state = ?2) \
             ORDER BY seq DESC LIMIT ?3"
        ))?;
        let limit = filter.limit.map_or(-1, i64::from);
        let rows = stmt.query_map(params![filter.function, filter.state.map(CallState::as_str), limit], row_call)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Queues a finished call again, as new: attempts from zero, its age
    /// from now.
    pub fn retry(&self, id: &str, now_ms: i64) -> Result<(), StoreError> {
        let mut conn = lock(&self.work);
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let state: Option<String> =
            tx.query_row("SELECT state FROM calls WHERE id = ?1", [id], |r| r.get(0)).optional()?;
        match state.as_deref().and_then(CallState::parse) {
            None => return Err(StoreError::NotFound(id.to_owned())),
            Some(s @ (CallState::Queued | CallState::Running)) => {
                return Err(StoreError::NotFinished { id: id.to_owned(), state: s.as_str() })
            }
            Some(_) => {}
        }
        tx.execute(
            "UPDATE calls SET state = 'queued', attempts = 0, queued_ms = ?2, not_before_ms = ?2, started_ms = NULL, \
             finished_ms = NULL, status = NULL, reply_headers = NULL, reply_body = NULL, error = NULL, \
             duration_ms = NULL, callback_state = 'none', callback_attempts = 0, callback_error = NULL, \
             size = length(body) WHERE id = ?1",
            params![id, now_ms],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Removes finished calls (done and failed, or the state given);
    /// queued and running ones are never purged.
    pub fn purge(&self, filter: &Filter) -> Result<usize, StoreError> {
        let state = match filter.state {
            Some(CallState::Queued | CallState::Running) => return Ok(0),
            s => s.map(CallState::as_str),
        };
        let conn = lock(&self.work);
        Ok(conn.execute(
            "DELETE FROM calls WHERE state IN ('done', 'failed') AND (?1 IS NULL OR function = ?1) \
             AND (?2 IS NULL OR state = ?2) AND callback_state != 'pending'",
            params![filter.function, state],
        )?)
    }

    /// Removes the finished calls `retention` no longer keeps; returns how many.
    pub fn apply_retention(&self, r: &Retention, now_ms: i64) -> Result<usize, StoreError> {
        let mut conn = lock(&self.work);
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let finished: Vec<(i64, i64, u64)> = {
            let mut stmt = tx.prepare_cached(
                "SELECT seq, finished_ms, size FROM calls WHERE finished_ms IS NOT NULL \
                 AND state IN ('done', 'failed') AND callback_state != 'pending' ORDER BY finished_ms, seq",
            )?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)?.max(0) as u64)))?;
            rows.collect::<Result<_, _>>()?
        };
        let times: Vec<(i64, u64)> = finished.iter().map(|(_, at, size)| (*at, *size)).collect();
        let n = retention::to_remove(&times, now_ms, r);
        if n > 0 {
            let mut stmt = tx.prepare_cached("DELETE FROM calls WHERE seq = ?1")?;
            for (seq, _, _) in &finished[..n] {
                stmt.execute([seq])?;
            }
        }
        tx.commit()?;
        Ok(n)
    }

    /// Calls per function and state, with the oldest queued.
    pub fn counts(&self) -> Result<Vec<Counts>, StoreError> {
        let conn = lock(&self.work);
        let mut stmt = conn.prepare_cached(
            "SELECT function, state, COUNT(*), MIN(CASE WHEN state = 'queued' THEN queued_ms END) \
             FROM calls GROUP BY function, state ORDER BY function",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)?, r.get::<_, Option<i64>>(3)?))
        })?;
        let mut out: Vec<Counts> = Vec::new();
        for row in rows {
            let (function, state, n, oldest) = row?;
            if out.last().is_none_or(|c| c.function != function) {
                out.push(Counts { function: function.clone(), ..Counts::default() });
            }
            let Some(c) = out.last_mut() else { continue };
            let n = n.max(0) as u64;
            match CallState::parse(&state) {
                Some(CallState::Queued) => {
                    c.queued = n;
                    c.oldest_queued_ms = oldest;
                }
                Some(CallState::Running) => c.running = n,
                Some(CallState::Done) => c.done = n,
                Some(CallState::Failed) => c.failed = n,
                None => {}
            }
        }
        Ok(out)
    }
}

fn insert_one(
    tx: &rusqlite::Transaction<'_>,
    call: &NewCall,
    now_ms: i64,
) -> Result<Result<Accepted, StoreError>, StoreError> {
    if let Some(key) = &call.key {
        let found: Option<String> = tx
            .query_row("SELECT id FROM calls WHERE function = ?1 AND idem_key = ?2", params![call.function, key], |r| {
                r.get(0)
            })
            .optional()?;
        if let Some(id) = found {
            return Ok(Ok(Accepted { id, duplicate: true }));
        }
    }
    if let Some(id) = &call.id {
        let found: Option<String> =
            tx.query_row("SELECT function FROM calls WHERE id = ?1", [id], |r| r.get(0)).optional()?;
        match found {
            Some(f) if f == call.function => return Ok(Ok(Accepted { id: id.clone(), duplicate: true })),
            Some(_) => return Ok(Err(StoreError::IdTaken(id.clone()))),
            None => {}
        }
    }
    let id = call.id.clone().unwrap_or_else(new_id);
    let r = &call.request;
    tx.prepare_cached(
        "INSERT INTO calls (id, function, kind, idem_key, method, path, query, headers, body, callback_url, state, \
         accepted_ms, queued_ms, not_before_ms, size) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, 'queued', ?11, ?11, ?11, ?12)",
    )?
    .execute(params![
        id,
        call.function,
        call.kind.as_str(),
        call.key,
        r.method,
        r.path,
        r.query,
        headers_json(&r.headers),
        r.body.as_ref(),
        call.callback_url,
        now_ms,
        r.body.len(),
    ])?;
    Ok(Ok(Accepted { id, duplicate: false }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, CallStore) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = CallStore::open(&dir.path().join("calls.db")).expect("open");
        (dir, store)
    }

    fn call(function: &str, body: &str) -> NewCall {
        NewCall {
            function: function.into(),
            kind: CallKind::Http,
            id: None,
            key: None,
            request: Request {
                method: "POST".into(),
                path: "/".into(),
                body: Bytes::from(body.to_owned()),
                ..Request::default()
            },
            callback_url: None,
        }
    }

    fn accept(s: &CallStore, c: NewCall, now: i64) -> Accepted {
        s.insert(&[c], now).expect("insert").remove(0).expect("accepted")
    }

    #[test]
    fn calls_are_claimed_in_arrival_order_per_function() {
        let (_d, s) = store();
        let ids: Vec<String> = (0..5).map(|i| accept(&s, call("f", &i.to_string()), 10).id).collect();
        accept(&s, call("g", "x"), 10);
        assert_eq!(s.queued_functions().expect("queued"), ["f", "g"]);
        let first = s.claim("f", 2, 11).expect("claim");
        assert_eq!(first.iter().map(|c| c.id.clone()).collect::<Vec<_>>(), ids[..2]);
        assert!(first.iter().all(|c| c.state == CallState::Running && c.attempts == 1));
        let rest = s.claim("f", 10, 11).expect("claim");
        assert_eq!(rest.len(), 3);
        assert_eq!(&*rest[0].request.body, b"2");
        assert!(s.claim("f", 10, 11).expect("claim").is_empty());
    }

    #[test]
    fn the_same_id_or_key_is_queued_once() {
        let (_d, s) = store();
        let mut c = call("f", "a");
        c.id = Some("my-id".into());
        assert_eq!(accept(&s, c.clone(), 1), Accepted { id: "my-id".into(), duplicate: false });
        assert_eq!(accept(&s, c.clone(), 2), Accepted { id: "my-id".into(), duplicate: true });
        c.function = "g".into();
        assert!(matches!(s.insert(&[c], 3).expect("insert").remove(0), Err(StoreError::IdTaken(_))));
        let mut k = call("f", "b");
        k.key = Some("key-1".into());
        let first = accept(&s, k.clone(), 4);
        let again = accept(&s, k.clone(), 5);
        assert_eq!((again.id.clone(), again.duplicate), (first.id.clone(), true));
        k.function = "g".into();
        assert!(!accept(&s, k, 6).duplicate, "keys are per function");
        assert_eq!(s.list(&Filter::default()).expect("list").len(), 3);
    }

    #[test]
    fn retries_wait_their_turn_and_running_calls_come_back_after_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("calls.db");
        let s = CallStore::open(&path).expect("open");
        let a = accept(&s, call("f", "a"), 0).id;
        let b = accept(&s, call("f", "b"), 0).id;
        s.claim("f", 2, 1).expect("claim");
        s.finish(&a, &Finish::Retry { not_before_ms: 100, status: 503, error: "busy".into() }, 2).expect("finish");
        assert!(s.claim("f", 5, 50).expect("claim").is_empty(), "not due yet");
        assert_eq!(s.next_due("f", 50).expect("due"), Some(100));
        assert_eq!(s.next_due("g", 50).expect("due"), None);
        assert!(s.has_queued("f").expect("queued") && !s.has_queued("g").expect("queued"));
        drop(s);
        let s = CallStore::open(&path).expect("reopen");
        assert_eq!(s.requeue_running().expect("requeue"), 1);
        let again = s.claim("f", 5, 3).expect("claim");
        assert_eq!(again.len(), 1);
        assert_eq!((again[0].id.clone(), again[0].attempts), (b, 2));
        let later = s.claim("f", 5, 100).expect("claim");
        assert_eq!((later[0].id.clone(), later[0].attempts), (a, 2));
    }

    #[test]
    fn finishing_schedules_the_callback_and_a_retry_by_hand_starts_afresh() {
        let (_d, s) = store();
        let mut c = call("f", "a");
        c.callback_url = Some("http://127.0.0.1:1/cb".into());
        let id = accept(&s, c, 0).id;
        s.claim("f", 1, 1).expect("claim");
        let fin = Finish::Final {
            status: 500,
            headers: vec![("x-a".into(), "1".into())],
            body: Bytes::from_static(b"boom"),
            error: Some("status 500 is not retried".into()),
            duration_ms: 5,
        };
        s.finish(&id, &fin, 10).expect("finish");
        let got = s.get(&id).expect("get").expect("there");
        assert_eq!((got.state, got.status, got.callback), (CallState::Failed, Some(500), CallbackState::Pending));
        assert_eq!(got.reply_headers, [("x-a".to_owned(), "1".to_owned())]);
        assert_eq!(s.due_callbacks(10, 10, &[]).expect("due").len(), 1);
        s.callback_attempt(&id, false, Some(20), Some("refused")).expect("cb");
        assert!(s.due_callbacks(10, 10, &[]).expect("due").is_empty());
        assert_eq!(s.next_callback(10).expect("next"), Some(20));
        s.callback_attempt(&id, true, None, None).expect("cb");
        assert_eq!(s.get(&id).expect("get").expect("there").callback, CallbackState::Delivered);
        assert!(matches!(s.retry("nope", 30), Err(StoreError::NotFound(_))));
        s.retry(&id, 30).expect("retry");
        let got = s.get(&id).expect("get").expect("there");
        assert_eq!((got.state, got.attempts, got.queued_ms, got.status), (CallState::Queued, 0, 30, None));
        assert!(matches!(s.retry(&id, 31), Err(StoreError::NotFinished { .. })));
    }

    #[test]
    fn purge_and_retention_take_finished_calls_only() {
        let (_d, s) = store();
        let done = accept(&s, call("f", "a"), 0).id;
        accept(&s, call("f", "b"), 0);
        s.claim("f", 1, 0).expect("claim");
        let fin = |body: &'static [u8]| Finish::Final {
            status: 200,
            headers: vec![],
            body: Bytes::from_static(body),
            error: None,
            duration_ms: 1,
        };
        s.finish(&done, &fin(b"ok"), 1).expect("finish");
        let counts = s.counts().expect("counts");
        assert_eq!((counts[0].queued, counts[0].done, counts[0].oldest_queued_ms), (1, 1, Some(0)));
        let r = Retention { keep: Duration::from_secs(1), max_bytes: u64::MAX };
        assert_eq!(s.apply_retention(&r, 500).expect("retention"), 0);
        assert_eq!(s.apply_retention(&r, 2000).expect("retention"), 1);
        assert_eq!(s.purge(&Filter::default()).expect("purge"), 0, "the queued one stays");
        assert_eq!(s.list(&Filter::default()).expect("list").len(), 1);
    }
}
