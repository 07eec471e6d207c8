//! Each function's log: what its workers write to stderr (and stdout, which
//! the shims point at stderr), kept as a bounded ring and streamed to
//! followers.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::SystemTime;

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

    /// The last `n` lines and a receiver for every line after them.
    pub fn follow(&self, n: usize) -> (Vec<LogLine>, broadcast::Receiver<LogLine>) {
        // Subscribe while holding the ring so no line falls between the two.
        let lines = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        let rx = self.tx.subscribe();
        let tail = lines.iter().skip(lines.len().saturating_sub(n)).cloned().collect();
        (tail, rx)
    }
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

    #[test]
    fn long_lines_are_cut_on_a_char_boundary() {
        let logs = FunctionLogs::default();
        logs.push("f", "f-1", "é".repeat(MAX_LINE));
        assert!(logs.tail(1)[0].text.len() <= MAX_LINE);
    }
}
