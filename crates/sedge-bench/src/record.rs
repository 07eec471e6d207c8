//! What a run leaves in its output directory, and reading it back:
//!
//! - `run.json`: the experiment as run (settings, scenarios with their URLs
//!   and labels), each step's duration and resources, and notes; rewritten
//!   after every step, so an interrupted run can still be reported.
//! - `raw.csv`: one row per request (see [`CSV_HEADER`]).
//!
//! The report is computed from these two files alone.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::BenchError;
use crate::outcome::{Outcome, Sample};
use crate::procstat::Resources;

pub const RUN_FILE: &str = "run.json";
pub const RAW_FILE: &str = "raw.csv";
pub const CSV_HEADER: &str = "step,kind,scenario,repetition,users,user,send_us,latency_us,status,bytes,outcome";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StepKind {
    /// N users for a duration or a request count, after a warm-up.
    Load,
    /// One request to a function just scaled to zero.
    Cold,
}

impl StepKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StepKind::Load => "load",
            StepKind::Cold => "cold",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScenarioRecord {
    /// "target/function".
    pub name: String,
    pub target: String,
    pub target_kind: String,
    pub function: String,
    pub url: String,
    pub labels: BTreeMap<String, String>,
}

impl ScenarioRecord {
    pub fn label(&self, key: &str) -> &str {
        self.labels.get(key).map_or("-", String::as_str)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    pub id: u32,
    pub kind: StepKind,
    pub scenario: String,
    pub users: u32,
    /// 1-based; for cold starts, which cold start of the scenario.
    pub repetition: u32,
    pub elapsed_s: f64,
    /// Local nodes only.
    pub resources: Option<Resources>,
    /// A cold start's phases as the node reported them (sedge targets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phases: Option<ColdPhases>,
}

/// Where one cold start went, from the node's `describe` (`lastColdStart`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ColdPhases {
    /// fresh, spare, zygote or model.
    pub kind: String,
    pub process_ms: f64,
    pub imports_ms: f64,
    pub model_ms: f64,
    pub first_answer_ms: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Host {
    pub cores: usize,
    pub os: String,
    pub generator: String,
}

impl Host {
    pub fn this() -> Self {
        Self {
            cores: std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get),
            os: format!("{} {}", std::env::consts::OS, std::env::consts::ARCH),
            generator: format!("sedge-bench {}", env!("CARGO_PKG_VERSION")),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub experiment: String,
    pub description: String,
    pub file: String,
    pub quick: bool,
    pub started: String,
    pub finished: Option<String>,
    pub host: Host,
    /// The step settings as run (durations in milliseconds).
    pub settings: serde_json::Value,
    pub scenarios: Vec<ScenarioRecord>,
    pub steps: Vec<StepRecord>,
    /// Things that went wrong without stopping the run.
    pub notes: Vec<String>,
    /// The engine alone, measured before and after the load steps.
    #[serde(default)]
    pub engine: Vec<crate::engine::EngineRun>,
}

impl RunRecord {
    pub fn save(&self, dir: &Path) -> Result<(), BenchError> {
        let path = dir.join(RUN_FILE);
        let text = serde_json::to_string_pretty(self)
            .map_err(|e| BenchError::Results { path: path.clone(), message: e.to_string() })?;
        write_atomically(&path, text.as_bytes())
    }

    pub fn load(dir: &Path) -> Result<Self, BenchError> {
        let path = dir.join(RUN_FILE);
        let text = std::fs::read_to_string(&path).map_err(BenchError::io(format!("reading {}", path.display())))?;
        serde_json::from_str(&text).map_err(|e| BenchError::Results { path, message: e.to_string() })
    }

    pub fn scenario(&self, name: &str) -> Option<&ScenarioRecord> {
        self.scenarios.iter().find(|s| s.name == name)
    }
}

/// Writes through a temporary file and a rename, so a reader never sees
/// half a file.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), BenchError> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(BenchError::io(format!("writing {}", tmp.display())))?;
    std::fs::rename(&tmp, path).map_err(BenchError::io(format!("writing {}", path.display())))
}

/// Appends request rows to `raw.csv`.
pub struct RawWriter {
    path: PathBuf,
    out: BufWriter<std::fs::File>,
}

impl RawWriter {
    pub fn create(dir: &Path) -> Result<Self, BenchError> {
        let path = dir.join(RAW_FILE);
        let file = std::fs::File::create(&path).map_err(BenchError::io(format!("creating {}", path.display())))?;
        let mut w = Self { path, out: BufWriter::new(file) };
        w.line(format_args!("{CSV_HEADER}"))?;
        Ok(w)
    }

    fn line(&mut self, args: std::fmt::Arguments<'_>) -> Result<(), BenchError> {
        writeln!(self.out, "{args}").map_err(BenchError::io(format!("writing {}", self.path.display())))
    }

    pub fn step(&mut self, step: &StepRecord, samples: &[Sample]) -> Result<(), BenchError> {
        for s in samples {
            self.line(format_args!(
                "{},{},{},{},{},{},{},{},{},{},{}",
                step.id,
                step.kind.as_str(),
                step.scenario,
                step.repetition,
                step.users,
                s.user,
                s.send_us,
                s.latency_us,
                s.status,
                s.bytes,
                s.outcome.as_str()
            ))?;
        }
        self.out.flush().map_err(BenchError::io(format!("writing {}", self.path.display())))
    }
}

/// Every request row of `raw.csv`, by step id.
pub fn read_raw(dir: &Path) -> Result<HashMap<u32, Vec<Sample>>, BenchError> {
    let path = dir.join(RAW_FILE);
    let file = std::fs::File::open(&path).map_err(BenchError::io(format!("reading {}", path.display())))?;
    let mut out: HashMap<u32, Vec<Sample>> = HashMap::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(BenchError::io(format!("reading {}", path.display())))?;
        if i == 0 || line.is_empty() {
            continue;
        }
        let bad =
            || BenchError::Results { path: path.clone(), message: format!("line {}: cannot read {line:?}", i + 1) };
        let f: Vec<&str> = line.split(',').collect();
        if f.len() != 11 {
            return Err(bad());
        }
        let num = |j: usize| f[j].parse::<u64>().map_err(|_| bad());
        let step = u32::try_from(num(0)?).map_err(|_| bad())?;
        let sample = Sample {
            user: u32::try_from(num(5)?).map_err(|_| bad())?,
            send_us: num(6)?,
            latency_us: num(7)?,
            status: u16::try_from(num(8)?).map_err(|_| bad())?,
            bytes: num(9)?,
            outcome: Outcome::parse(f[10]).ok_or_else(bad)?,
        };
        out.entry(step).or_default().push(sample);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_round_trip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let step = StepRecord {
            id: 7,
            kind: StepKind::Load,
            scenario: "t/f".into(),
            users: 2,
            repetition: 1,
            elapsed_s: 1.0,
            resources: None,
            phases: None,
        };
        let samples = vec![
            Sample { user: 0, send_us: 5, latency_us: 1200, status: 200, bytes: 2, outcome: Outcome::Ok },
            Sample { user: 1, send_us: 9, latency_us: 30, status: 0, bytes: 0, outcome: Outcome::Connect },
        ];
        let mut w = RawWriter::create(dir.path()).expect("create");
        w.step(&step, &samples).expect("write");
        drop(w);
        let back = read_raw(dir.path()).expect("read");
        assert_eq!(back.get(&7), Some(&samples));
    }
}
