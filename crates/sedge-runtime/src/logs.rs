//! Each function's log: what its workers write to stdout and stderr, kept
//! as a bounded ring and streamed to followers. Each worker's output is
//! capped per second ([`RateCap`]) so one chatty worker cannot drown the
//! others or keep the node busy copying lines.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::sync::broadcast;

/// Lines kept per function for `logs --tail`.
const KEEP: usize = 2000;
/// Longer lines are cut so one runaway write cannot eat the node's memory.
pub const MAX_LINE: usize = 16 * 1024;

#[derive(Debug, Clone)]
pub struct LogLine {
    pub function: String,
    /// Which worker wrote it, e.g. `hello-3`.
    pub instance: String,
    pub timestamp: SystemTime,
    pub text: String,
}

#[derive(Debug)]
pub struct FunctionLogs {
    lines: Mutex<VecDeque<LogLine>>,
    tx: broadcast::Sender<LogLine>,
}

impl Default for FunctionLogs {
    fn default() -> Self {
        Self { lines: Mutex::new(VecDeque::new()), tx: broadcast::channel(256).0 }
    }
}

impl FunctionLogs {
    pub fn push(&self, function: &str, instance: &str, mut text: String) {
        if text.len() > MAX_LINE {
            let mut cut = MAX_LINE;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
        }
        let line = LogLine {
            function: function.to_owned(),
            instance: instance.to_owned(),
            timestamp: SystemTime::now(),
            text,
        };
        let mut lines = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        if lines.len() == KEEP {
            lines.pop_front();
        }
        lines.push_back(line.clone());
        // Nobody following is the usual case, not an error.
        let _ = self.tx.send(line);
    }

    /// The last `n` lines, oldest first.
    pub fn tail(&self, n: usize) -> Vec<LogLine> {
        let lines = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        lines.iter().skip(lines.len().saturating_sub(n)).cloned().collect()
    }

    /// The lines `keep` takes, oldest first; only those are copied.
    pub fn matching(&self, keep: impl Fn(&LogLine) -> bool) -> Vec<LogLine> {
        let lines = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        lines.iter().filter(|l| keep(l)).cloned().collect()
    }

    /// The last `n` lines and a receiver for every line after them.
    pub fn follow(&self, n: usize) -> (Vec<LogLine>, broadcast::Receiver<LogLine>) {
        // Subscribe while holding the ring so no line falls between the two.
        let lines = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        let rx = self.tx.subscribe();
        let tail = lines.iter().skip(lines.len().saturating_sub(n)).cloned().collect();
        (tail, rx)
    }
}

/// The last lines a worker wrote, quoted when it fails to start.
#[derive(Debug, Default)]
pub struct RecentLines(Mutex<VecDeque<String>>);

impl RecentLines {
    const KEEP: usize = 20;

    fn push(&self, line: &str) {
        let mut r = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if r.len() == Self::KEEP {
            r.pop_front();
        }
        r.push_back(line.to_owned());
    }

    pub fn joined(&self) -> String {
        let r = self.0.lock().unwrap_or_else(|p| p.into_inner());
        r.iter().map(String::as_str).collect::<Vec<_>>().join("\n")
    }
}

/// Lines a worker may log per second; the rest of that second is dropped
/// and counted.
pub const MAX_LINES_PER_SECOND: u32 = 1000;
/// Bytes a worker may log per second.
pub const MAX_BYTES_PER_SECOND: u64 = 1024 * 1024;

/// What to do with one line under the cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    Write,
    /// Write, after a notice that this many lines were dropped before it.
    WriteAfterDropped(u64),
    Drop,
}

/// A per-second cap on lines and bytes, on a caller-supplied clock.
#[derive(Debug)]
pub struct RateCap {
    max_lines: u32,
    max_bytes: u64,
    window: Duration,
    lines: u32,
    bytes: u64,
    dropped: u64,
}

impl RateCap {
    pub fn new(max_lines: u32, max_bytes: u64) -> Self {
        Self { max_lines, max_bytes, window: Duration::ZERO, lines: 0, bytes: 0, dropped: 0 }
    }

    pub fn admit(&mut self, now: Duration, len: usize) -> Admit {
        if now >= self.window + Duration::from_secs(1) {
            self.window = now;
            self.lines = 0;
            self.bytes = 0;
        }
        if self.lines >= self.max_lines || self.bytes + len as u64 > self.max_bytes {
            self.dropped += 1;
            return Admit::Drop;
        }
        self.lines += 1;
        self.bytes += len as u64;
        match std::mem::take(&mut self.dropped) {
            0 => Admit::Write,
            n => Admit::WriteAfterDropped(n),
        }
    }
}

/// Where one worker's lines go: the function's log, under the worker's
/// name, capped per second ([`RateCap`]). Clones share the cap.
#[derive(Clone)]
pub struct LogSink(Arc<SinkInner>);

struct SinkInner {
    function: String,
    instance: String,
    logs: Arc<FunctionLogs>,
    cap: Mutex<RateCap>,
    origin: tokio::time::Instant,
}

impl LogSink {
    pub fn new(function: String, instance: String, logs: Arc<FunctionLogs>) -> Self {
        Self(Arc::new(SinkInner {
            function,
            instance,
            logs,
            cap: Mutex::new(RateCap::new(MAX_LINES_PER_SECOND, MAX_BYTES_PER_SECOND)),
            origin: tokio::time::Instant::now(),
        }))
    }

    /// A sink for another instance of the same function.
    pub fn sibling(&self, instance: String) -> Self {
        Self::new(self.0.function.clone(), instance, self.0.logs.clone())
    }

    /// The worker's name, e.g. `hello-3`.
    pub fn instance(&self) -> &str {
        &self.0.instance
    }

    /// Writes one line, unless this second's share is used up.
    pub fn line(&self, text: String) {
        let s = &self.0;
        let admit = s.cap.lock().unwrap_or_else(|p| p.into_inner()).admit(s.origin.elapsed(), text.len());
        if let Admit::WriteAfterDropped(n) = admit {
            let notice = format!(
                "sedge: {n} lines dropped: over the cap of {MAX_LINES_PER_SECOND} lines or \
                 {MAX_BYTES_PER_SECOND} bytes a second per worker"
            );
            s.logs.push(&s.function, &s.instance, notice);
        }
        if admit != Admit::Drop {
            s.logs.push(&s.function, &s.instance, text);
        }
    }
}

/// Whose log a worker's output belongs to. A spare worker runs before it is
/// any function's; its sink is set when it is assigned.
#[derive(Default)]
pub struct LogTarget(Mutex<Option<LogSink>>);

impl LogTarget {
    pub fn new(sink: LogSink) -> Self {
        Self(Mutex::new(Some(sink)))
    }

    pub fn set(&self, sink: LogSink) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(sink);
    }

    fn write(&self, text: String) {
        let sink = self.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
        match sink {
            Some(sink) => sink.line(text),
            None => tracing::debug!("spare worker: {text}"),
        }
    }
}

/// Copies a worker's output into the function's log, line by line, until
/// the stream ends. A line longer than [`MAX_LINE`] is cut there; the rest
/// of it is skipped without being buffered. The task ends with the stream.
pub fn pump<R: AsyncRead + Unpin + Send + 'static>(
    stream: R,
    target: Arc<LogTarget>,
    recent: Arc<RecentLines>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut reader = BufReader::new(stream);
        let mut line = Vec::new();
        let mut skipping = false;
        loop {
            let (done, used) = match reader.fill_buf().await {
                Ok([]) | Err(_) => break,
                Ok(buf) => match buf.iter().position(|&b| b == b'\n') {
                    Some(i) => {
                        if !skipping {
                            line.extend_from_slice(&buf[..i.min(MAX_LINE.saturating_sub(line.len()))]);
                        }
                        (true, i + 1)
                    }
                    None => {
                        if !skipping {
                            line.extend_from_slice(&buf[..buf.len().min(MAX_LINE.saturating_sub(line.len()))]);
                        }
                        (false, buf.len())
                    }
                },
            };
            reader.consume(used);
            if !done {
                skipping = line.len() >= MAX_LINE;
                continue;
            }
            let text = String::from_utf8_lossy(&line).into_owned();
            recent.push(&text);
            target.write(text);
            line.clear();
            skipping = false;
        }
        if !line.is_empty() {
            let text = String::from_utf8_lossy(&line).into_owned();
            recent.push(&text);
            target.write(text);
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_keeps_the_newest_lines() {
        let logs = FunctionLogs::default();
        for i in 0..KEEP + 5 {
            logs.push("f", "f-1", format!("line {i}"));
        }
        let tail = logs.tail(2);
        assert_eq!(tail.len(), 2);
        assert_eq!(tail[1].text, format!("line {}", KEEP + 4));
        assert_eq!(logs.tail(usize::MAX).len(), KEEP);
    }

    #[tokio::test]
    async fn pump_splits_lines_and_bounds_long_ones() {
        let logs = Arc::new(FunctionLogs::default());
        let recent = Arc::new(RecentLines::default());
        let mut input = b"one\ntwo\n".to_vec();
        input.extend(std::iter::repeat_n(b'x', MAX_LINE * 3));
        input.extend(b"\nlast");
        let target = Arc::new(LogTarget::new(LogSink::new("f".into(), "f-1".into(), logs.clone())));
        pump(std::io::Cursor::new(input), target, recent.clone()).await.expect("the pump ends with its stream");
        let lines: Vec<String> = logs.tail(10).into_iter().map(|l| l.text).collect();
        assert_eq!(lines.len(), 4, "{:?}", lines.iter().map(|l| l.len()).collect::<Vec<_>>());
        assert_eq!((lines[0].as_str(), lines[1].as_str(), lines[3].as_str()), ("one", "two", "last"));
        assert_eq!(lines[2].len(), MAX_LINE);
        assert!(recent.joined().ends_with("last"));
    }

    #[test]
    fn the_cap_drops_the_rest_of_a_busy_second_and_says_how_many() {
        let mut cap = RateCap::new(3, 1000);
        let t = Duration::from_millis;
        assert_eq!(cap.admit(t(0), 10), Admit::Write);
        assert_eq!(cap.admit(t(100), 10), Admit::Write);
        assert_eq!(cap.admit(t(200), 10), Admit::Write);
        assert_eq!(cap.admit(t(300), 10), Admit::Drop);
        assert_eq!(cap.admit(t(999), 10), Admit::Drop);
        assert_eq!(cap.admit(t(1000), 10), Admit::WriteAfterDropped(2));
        assert_eq!(cap.admit(t(1001), 10), Admit::Write);
        // Bytes count too: one huge line fills the second.
        assert_eq!(cap.admit(t(5000), 995), Admit::Write);
        assert_eq!(cap.admit(t(5001), 10), Admit::Drop);
        assert_eq!(cap.admit(t(6001), 10), Admit::WriteAfterDropped(1));
    }

    #[test]
    fn long_lines_are_cut_on_a_char_boundary() {
        let logs = FunctionLogs::default();
        logs.push("f", "f-1", "é".repeat(MAX_LINE));
        assert!(logs.tail(1)[0].text.len() <= MAX_LINE);
    }
}
