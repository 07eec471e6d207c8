//! Where each cold start of a function went, phase by phase (process,
//! imports, model load, first answer): kept for the metrics to read
//! (`sedge_cold_start_seconds`) and the last one for `describe`.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use crate::engine::{StartKind, StartPhases};

/// Starts kept for a scrape that has not come yet; older ones are dropped.
const UNREAD: usize = 256;

/// One worker's start, up to its first answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ColdStart {
    pub kind: StartKind,
    pub process: Duration,
    pub imports: Duration,
    pub model: Duration,
    /// The first call the worker answered, from when it was handed over.
    pub first_answer: Duration,
}

impl ColdStart {
    pub fn new(phases: StartPhases, first_answer: Duration) -> Self {
        Self { kind: phases.kind, process: phases.process, imports: phases.imports, model: phases.model, first_answer }
    }

    /// The phases by their metric names.
    pub fn phases(&self) -> [(&'static str, Duration); 4] {
        [
            ("process", self.process),
            ("imports", self.imports),
            ("model", self.model),
            ("first_answer", self.first_answer),
        ]
    }

    pub fn total(&self) -> Duration {
        self.process + self.imports + self.model + self.first_answer
    }
}

#[derive(Debug, Default)]
struct Kept {
    unread: VecDeque<ColdStart>,
    last: Option<ColdStart>,
}

/// A function's cold starts, across its versions.
#[derive(Debug, Default)]
pub struct ColdStarts {
    kept: Mutex<Kept>,
}

impl ColdStarts {
    fn lock(&self) -> std::sync::MutexGuard<'_, Kept> {
        self.kept.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn record(&self, start: ColdStart) {
        let mut kept = self.lock();
        if kept.unread.len() >= UNREAD {
            kept.unread.pop_front();
        }
        kept.unread.push_back(start);
        kept.last = Some(start);
    }

    /// The starts recorded since the last call (for a metrics scrape).
    pub fn take_unread(&self) -> Vec<ColdStart> {
        self.lock().unread.drain(..).collect()
    }

    pub fn last(&self) -> Option<ColdStart> {
        self.lock().last
    }
}
