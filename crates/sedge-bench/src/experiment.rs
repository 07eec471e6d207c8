//! Experiment files: the matrix of targets × functions × user counts ×
//! repetitions, and how each step is run. The TOML form (`File`) is read
//! with unknown fields refused, then checked and resolved (payload files
//! read, paths made absolute) into an [`Experiment`]; every complaint names
//! the field it is about. The format is described in `docs/bench.md`.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Deserializer, Serialize};

use crate::engine::EngineSpec;
use crate::error::BenchError;
use crate::load::Stop;

const DEFAULT_DURATION: Duration = Duration::from_secs(10);

/// A duration written as text, as in `"500ms"` or `"1m 30s"`.
#[derive(Debug, Clone, Copy)]
struct Dur(Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        crate::parse_duration(&text).map(Dur).map_err(serde::de::Error::custom)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    name: Option<String>,
    #[serde(default)]
    description: String,
    #[serde(default)]
    load: LoadFile,
    quick: Option<LoadFile>,
    #[serde(default, rename = "target")]
    targets: Vec<TargetFile>,
    #[serde(default, rename = "function")]
    functions: Vec<FunctionFile>,
    engine: Option<EngineFile>,
}

/// The engine measured alone in the same run (`sedge bench ort`'s work).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EngineFile {
    model: PathBuf,
    input: Option<PathBuf>,
    sessions: Option<usize>,
    threads: Option<usize>,
    shared: Option<bool>,
    duration: Option<Dur>,
    interleave: Option<bool>,
}

#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
struct LoadFile {
    users: Option<Vec<u32>>,
    repetitions: Option<u32>,
    warmup: Option<Dur>,
    duration: Option<Dur>,
    requests: Option<u64>,
    timeout: Option<Dur>,
    think: Option<Dur>,
    rate: Option<f64>,
    pause: Option<Dur>,
    keep_alive: Option<bool>,
    cold_starts: Option<u32>,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum KindFile {
    Sedge,
    Url,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TargetFile {
    name: String,
    kind: KindFile,
    gateway: Option<String>,
    url: Option<String>,
    functions: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FunctionFile {
    name: String,
    dir: Option<PathBuf>,
    method: Option<String>,
    payload: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    expect: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    /// Files added to the folder's bundle (models kept out of the repository).
    #[serde(default)]
    files: Vec<PathBuf>,
}

/// How every load step of the experiment is run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Settings {
    pub users: Vec<u32>,
    pub repetitions: u32,
    #[serde(with = "as_ms")]
    pub warmup: Duration,
    /// Per step: `Some(d)` for a fixed duration, else `requests`.
    #[serde(with = "opt_as_ms")]
    pub duration: Option<Duration>,
    pub requests: Option<u64>,
    #[serde(with = "as_ms")]
    pub timeout: Duration,
    #[serde(with = "as_ms")]
    pub think: Duration,
    /// Open loop at this many requests per second; `None`: closed loop.
    pub rate: Option<f64>,
    #[serde(with = "as_ms")]
    pub pause: Duration,
    pub keep_alive: bool,
    /// Cold-start requests per function on sedge targets (0: none).
    pub cold_starts: u32,
}

impl Settings {
    pub fn stop(&self) -> Stop {
        match (self.duration, self.requests) {
            (_, Some(n)) => Stop::Requests(n),
            (Some(d), None) => Stop::After(d),
            (None, None) => Stop::After(DEFAULT_DURATION),
        }
    }
}

/// Durations written to results as milliseconds, so they read the same in
/// any tool.
pub(crate) mod as_ms {
    pub fn serialize<S: serde::Serializer>(d: &std::time::Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64() * 1000.0)
    }
}

mod opt_as_ms {
    pub fn serialize<S: serde::Serializer>(d: &Option<std::time::Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_f64(d.as_secs_f64() * 1000.0),
            None => s.serialize_none(),
        }
    }
}

/// Where a target's functions are called.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum TargetKind {
    /// A sedge node: functions with a `dir` are deployed to it first, and it
    /// gets cold-start runs. Without a gateway the bench starts a local node.
    Sedge { gateway: Option<String> },
    /// Any HTTP FaaS, by a URL template with `{name}` for the function.
    Url { template: String },
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Target {
    pub name: String,
    #[serde(flatten)]
    pub kind: TargetKind,
    /// The functions run against it; `None`: all of them.
    pub functions: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Function {
    pub name: String,
    /// The folder deployed to sedge targets (absolute).
    pub dir: Option<PathBuf>,
    pub method: String,
    pub headers: Vec<(String, String)>,
    #[serde(skip)]
    pub payload: Bytes,
    pub expect: Option<String>,
    /// Grouping for charts: `workload`, `language`, `style` by convention.
    pub labels: BTreeMap<String, String>,
    /// Files put into the bundle beside the folder's own (absolute).
    pub files: Vec<PathBuf>,
}

impl Function {
    pub fn label(&self, key: &str) -> &str {
        self.labels.get(key).map_or("-", String::as_str)
    }
}

/// A checked experiment, ready to run.
#[derive(Debug, Clone, Serialize)]
pub struct Experiment {
    pub file: PathBuf,
    pub name: String,
    pub description: String,
    pub quick: bool,
    pub settings: Settings,
    pub targets: Vec<Target>,
    pub functions: Vec<Function>,
    /// The engine to measure alone before and after the load steps.
    pub engine: Option<EngineSpec>,
}

/// One target × function pair, by index into the experiment's lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scenario {
    pub target: usize,
    pub function: usize,
}

impl Experiment {
    /// Reads, checks and resolves an experiment file; `quick` applies its
    /// `[quick]` table (or a built-in reduction).
    pub fn load(path: &Path, quick: bool) -> Result<Self, BenchError> {
        let text = std::fs::read_to_string(path).map_err(BenchError::io(format!("reading {}", path.display())))?;
        let base = path.parent().map_or_else(|| PathBuf::from("."), Path::to_owned);
        Self::parse(path, &text, &base, quick)
    }

    /// As [`Experiment::load`], for text already read; relative paths in it
    /// are taken from `base`.
    pub fn parse(path: &Path, text: &str, base: &Path, quick: bool) -> Result<Self, BenchError> {
        let fail = |message: String| BenchError::Experiment { file: path.to_owned(), message };
        let file: File = toml::from_str(text).map_err(|e| fail(e.to_string().trim_end().to_owned()))?;
        let name = match file.name {
            Some(n) => n,
            None => path.file_stem().map_or_else(|| "experiment".into(), |s| s.to_string_lossy().into_owned()),
        };
        let settings = settings(&file.load, file.quick.as_ref(), quick).map_err(fail)?;
        let functions = functions(file.functions, base).map_err(fail)?;
        let targets = targets(file.targets, &functions).map_err(fail)?;
        let engine = file.engine.map(|e| engine(e, base, quick)).transpose().map_err(fail)?;
        Ok(Self {
            file: path.to_owned(),
            name,
            description: file.description,
            quick,
            settings,
            targets,
            functions,
            engine,
        })
    }

    /// Every target × function pair the targets accept, targets first.
    pub fn scenarios(&self) -> Vec<Scenario> {
        let mut out = Vec::new();
        for (t, target) in self.targets.iter().enumerate() {
            for (f, function) in self.functions.iter().enumerate() {
                if target.functions.as_ref().is_none_or(|names| names.contains(&function.name)) {
                    out.push(Scenario { target: t, function: f });
                }
            }
        }
        out
    }

    /// "target/function", the scenario's name in results.
    pub fn scenario_name(&self, s: Scenario) -> String {
        format!("{}/{}", self.targets[s.target].name, self.functions[s.function].name)
    }
}

fn settings(load: &LoadFile, quick_file: Option<&LoadFile>, quick: bool) -> Result<Settings, String> {
    check_load("load", load)?;
    let mut merged = load.clone();
    if quick {
        let q = match quick_file {
            Some(q) => {
                check_load("quick", q)?;
                q.clone()
            }
            None => built_in_quick(load),
        };
        override_with(&mut merged.users, &q.users);
        override_with(&mut merged.repetitions, &q.repetitions);
        override_with(&mut merged.warmup, &q.warmup);
        override_with(&mut merged.timeout, &q.timeout);
        override_with(&mut merged.think, &q.think);
        override_with(&mut merged.rate, &q.rate);
        override_with(&mut merged.pause, &q.pause);
        override_with(&mut merged.keep_alive, &q.keep_alive);
        override_with(&mut merged.cold_starts, &q.cold_starts);
        // A quick table that sets one of duration/requests replaces both.
        if q.duration.is_some() || q.requests.is_some() {
            merged.duration = q.duration;
            merged.requests = q.requests;
        }
    }
    let users = merged.users.unwrap_or_else(|| vec![1]);
    Ok(Settings {
        users,
        repetitions: merged.repetitions.unwrap_or(1),
        warmup: merged.warmup.map_or(Duration::ZERO, |d| d.0),
        duration: merged.duration.map(|d| d.0).or(merged.requests.is_none().then_some(DEFAULT_DURATION)),
        requests: merged.requests,
        timeout: merged.timeout.map_or(Duration::from_secs(30), |d| d.0),
        think: merged.think.map_or(Duration::ZERO, |d| d.0),
        rate: merged.rate,
        pause: merged.pause.map_or(Duration::from_millis(250), |d| d.0),
        keep_alive: merged.keep_alive.unwrap_or(true),
        cold_starts: merged.cold_starts.unwrap_or(0),
    })
}

fn override_with<T: Clone>(value: &mut Option<T>, with: &Option<T>) {
    if with.is_some() {
        value.clone_from(with);
    }
}

fn check_load(table: &str, l: &LoadFile) -> Result<(), String> {
    if let Some(users) = &l.users {
        if users.is_empty() {
            return Err(format!("{table}.users: give at least one user count"));
        }
        if users.contains(&0) {
            return Err(format!("{table}.users: user counts start at 1"));
        }
    }
    if l.repetitions == Some(0) {
        return Err(format!("{table}.repetitions: must be at least 1"));
    }
    if l.duration.is_some() && l.requests.is_some() {
        return Err(format!("{table}.requests: set either duration or requests, not both"));
    }
    if l.duration.is_some_and(|d| d.0.is_zero()) {
        return Err(format!("{table}.duration: must be longer than zero"));
    }
    if l.requests == Some(0) {
        return Err(format!("{table}.requests: must be at least 1"));
    }
    if l.timeout.is_some_and(|d| d.0.is_zero()) {
        return Err(format!("{table}.timeout: must be longer than zero"));
    }
    if l.rate.is_some_and(|r| !(r.is_finite() && r > 0.0)) {
        return Err(format!("{table}.rate: must be a positive number of requests per second"));
    }
    Ok(())
}

/// `--quick` without a `[quick]` table: the smallest and largest user
/// counts, one repetition, short steps.
fn built_in_quick(load: &LoadFile) -> LoadFile {
    let users = load.users.as_ref().map(|u| {
        let (lo, hi) = (u.iter().min().copied().unwrap_or(1), u.iter().max().copied().unwrap_or(1));
        if lo == hi {
            vec![lo]
        } else {
            vec![lo, hi]
        }
    });
    let cap = |d: Option<Dur>, max: Duration| Some(Dur(d.map_or(max, |d| d.0.min(max))));
    LoadFile {
        users,
        repetitions: Some(1),
        warmup: cap(load.warmup, Duration::from_millis(500)),
        duration: load.requests.is_none().then(|| cap(load.duration, Duration::from_secs(2))).flatten(),
        requests: load.requests.map(|n| n.min(200)),
        cold_starts: load.cold_starts.map(|n| n.min(2)),
        ..LoadFile::default()
    }
}

/// DNS-label-like: lowercase letters, digits and `-`; safe in file names,
/// CSV cells and URLs.
fn check_name(field: &str, name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!("{field}: {name:?} must be 1-63 lowercase letters, digits or '-', not starting or ending with '-'"))
    }
}

fn functions(files: Vec<FunctionFile>, base: &Path) -> Result<Vec<Function>, String> {
    if files.is_empty() {
        return Err("function: add at least one [[function]]".into());
    }
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for (i, f) in files.into_iter().enumerate() {
        let at = format!("function[{i}]");
        check_name(&format!("{at}.name"), &f.name)?;
        if !seen.insert(f.name.clone()) {
            return Err(format!("{at}.name: {:?} appears twice", f.name));
        }
        let at = format!("{at} ({})", f.name);
        let dir = match f.dir {
            Some(d) => {
                let d = base.join(d);
                if !d.join("sedge.toml").is_file() {
                    return Err(format!("{at}.dir: {} has no sedge.toml", d.display()));
                }
                Some(d.canonicalize().map_err(|e| format!("{at}.dir: {}: {e}", d.display()))?)
            }
            None => None,
        };
        let fetch = |path: &Path| {
            if path.components().any(|c| c.as_os_str() == "models") {
                " (scripts/fetch-models.sh puts the models there)"
            } else {
                ""
            }
        };
        let payload = match f.payload.as_deref() {
            Some(p) if p.starts_with('@') => {
                let path = base.join(&p[1..]);
                Bytes::from(
                    std::fs::read(&path)
                        .map_err(|e| format!("{at}.payload: cannot read {}: {e}{}", path.display(), fetch(&path)))?,
                )
            }
            Some(p) => Bytes::from(p.to_owned()),
            None => Bytes::new(),
        };
        let method = f.method.unwrap_or_else(|| if payload.is_empty() { "GET".into() } else { "POST".into() });
        if method.is_empty() || !method.bytes().all(|b| b.is_ascii_alphabetic()) {
            return Err(format!("{at}.method: {method:?} is not an HTTP method"));
        }
        if !f.files.is_empty() && dir.is_none() {
            return Err(format!("{at}.files: only a function with a dir has a bundle to add them to"));
        }
        let mut files = Vec::with_capacity(f.files.len());
        for file in &f.files {
            let path = base.join(file);
            if !path.is_file() {
                return Err(format!("{at}.files: {} is not a file{}", path.display(), fetch(&path)));
            }
            files.push(path.canonicalize().map_err(|e| format!("{at}.files: {}: {e}", path.display()))?);
        }
        out.push(Function {
            files,
            name: f.name,
            dir,
            method: method.to_ascii_uppercase(),
            headers: f.headers.into_iter().collect(),
            payload,
            expect: f.expect,
            labels: f.labels,
        });
    }
    Ok(out)
}

fn engine(e: EngineFile, base: &Path, quick: bool) -> Result<EngineSpec, String> {
    let file = |field: &str, p: &Path| -> Result<PathBuf, String> {
        let path = base.join(p);
        if path.is_file() {
            Ok(path)
        } else {
            Err(format!(
                "engine.{field}: {} is not a file (scripts/fetch-models.sh puts the models in models/)",
                path.display()
            ))
        }
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let sessions = e.sessions.unwrap_or(cores);
    let threads = e.threads.unwrap_or(1);
    if sessions == 0 || threads == 0 {
        return Err("engine.sessions and engine.threads must be at least 1".into());
    }
    let default = if quick { Duration::from_secs(2) } else { Duration::from_secs(5) };
    Ok(EngineSpec {
        model: file("model", &e.model)?,
        input: e.input.as_deref().map(|p| file("input", p)).transpose()?,
        sessions,
        threads,
        shared: e.shared.unwrap_or(false),
        duration: e.duration.map_or(default, |d| d.0),
        interleave: e.interleave.unwrap_or(false),
    })
}

fn targets(files: Vec<TargetFile>, functions: &[Function]) -> Result<Vec<Target>, String> {
    if files.is_empty() {
        return Err("target: add at least one [[target]]".into());
    }
    let mut seen = HashSet::new();
    let mut local_nodes = 0;
    let mut out = Vec::new();
    for (i, t) in files.into_iter().enumerate() {
        let at = format!("target[{i}]");
        check_name(&format!("{at}.name"), &t.name)?;
        if !seen.insert(t.name.clone()) {
            return Err(format!("{at}.name: {:?} appears twice", t.name));
        }
        let kind = match t.kind {
            KindFile::Sedge => {
                if t.url.is_some() {
                    return Err(format!("{at}.url: a sedge target takes a gateway, not a URL template"));
                }
                if let Some(g) = &t.gateway {
                    check_http(&format!("{at}.gateway"), g)?;
                } else {
                    local_nodes += 1;
                    if local_nodes > 1 {
                        return Err(format!("{at}.gateway: only one sedge target may run on the local node"));
                    }
                }
                TargetKind::Sedge { gateway: t.gateway.map(|g| g.trim_end_matches('/').to_owned()) }
            }
            KindFile::Url => {
                if t.gateway.is_some() {
                    return Err(format!("{at}.gateway: only sedge targets have a gateway; give url"));
                }
                let url = t.url.ok_or_else(|| format!("{at}.url: a url target needs a URL template"))?;
                check_http(&format!("{at}.url"), &url)?;
                if !url.contains("{name}") {
                    return Err(format!("{at}.url: the template needs {{name}} where the function name goes"));
                }
                TargetKind::Url { template: url }
            }
        };
        if let Some(names) = &t.functions {
            if let Some(unknown) = names.iter().find(|n| !functions.iter().any(|f| &f.name == *n)) {
                return Err(format!("{at}.functions: no [[function]] is named {unknown:?}"));
            }
        }
        out.push(Target { name: t.name, kind, functions: t.functions });
    }
    Ok(out)
}

fn check_http(field: &str, url: &str) -> Result<(), String> {
    if url.starts_with("http://") {
        Ok(())
    } else {
        Err(format!("{field}: {url:?} must start with http:// (https is not supported)"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        [[target]]
        name = "faas"
        kind = "url"
        url = "http://127.0.0.1:1/function/{name}"

        [[function]]
        name = "hello"
        payload = '{"name": "edge"}'
        labels = { workload = "hello", language = "python", style = "openfaas" }
    "#;

    fn parse(text: &str, quick: bool) -> Result<Experiment, BenchError> {
        Experiment::parse(Path::new("exp.toml"), text, Path::new("."), quick)
    }

    fn error(text: &str) -> String {
        parse(text, false).expect_err("should be refused").to_string()
    }

    #[test]
    fn a_minimal_file_gets_defaults() {
        let e = parse(MINIMAL, false).expect("valid");
        assert_eq!(e.name, "exp");
        assert_eq!(e.settings.users, vec![1]);
        assert_eq!(e.settings.stop(), Stop::After(DEFAULT_DURATION));
        assert_eq!(e.functions[0].method, "POST");
        assert_eq!(e.functions[0].label("style"), "openfaas");
        assert_eq!(e.scenarios().len(), 1);
        assert_eq!(e.scenario_name(e.scenarios()[0]), "faas/hello");
    }

    #[test]
    fn quick_takes_the_quick_table_or_shrinks_the_run() {
        let text = format!("[load]\nusers = [1, 5, 50]\nrepetitions = 3\nduration = \"30s\"\n{MINIMAL}");
        let q = parse(&text, true).expect("valid");
        assert_eq!(q.settings.users, vec![1, 50]);
        assert_eq!(q.settings.repetitions, 1);
        assert_eq!(q.settings.stop(), Stop::After(Duration::from_secs(2)));
        let text = format!("[load]\nusers = [1, 5]\nduration = \"30s\"\n[quick]\nrequests = 10\n{MINIMAL}");
        let q = parse(&text, true).expect("valid");
        assert_eq!((q.settings.users.clone(), q.settings.stop()), (vec![1, 5], Stop::Requests(10)));
    }

    #[test]
    fn unknown_fields_are_named() {
        let e = error(&format!("[load]\nuserz = [1]\n{MINIMAL}"));
        assert!(e.contains("userz"), "{e}");
        let e = error(&MINIMAL.replace("payload =", "paylod ="));
        assert!(e.contains("paylod"), "{e}");
    }

    #[test]
    fn bad_values_are_named() {
        let cases = [
            (format!("[load]\nusers = []\n{MINIMAL}"), "load.users"),
            (format!("[load]\nduration = \"1s\"\nrequests = 5\n{MINIMAL}"), "load.requests"),
            (format!("[load]\nwarmup = \"soon\"\n{MINIMAL}"), "warmup"),
            (format!("[load]\nrate = -1.0\n{MINIMAL}"), "load.rate"),
            (MINIMAL.replace("{name}", "x"), "target[0].url"),
            (MINIMAL.replace("name = \"hello\"", "name = \"Hello!\""), "function[0].name"),
            (MINIMAL.replace("'{\"name\": \"edge\"}'", "\"@missing.json\""), "function[0] (hello).payload"),
            (MINIMAL.replace("kind = \"url\"", "kind = \"lambda\""), "kind"),
            (format!("{MINIMAL}\n[[function]]\nname = \"hello\""), "function[1].name"),
        ];
        for (text, field) in cases {
            let e = error(&text);
            assert!(e.contains(field), "expected {field:?} in: {e}");
        }
    }

    #[test]
    fn a_missing_function_folder_is_named() {
        let text = MINIMAL.replace("payload =", "dir = \"no/such/dir\"\npayload =");
        let e = error(&text);
        assert!(e.contains("function[0] (hello).dir"), "{e}");
    }

    #[test]
    fn an_engine_table_needs_its_files_and_takes_defaults() {
        let e = error(&format!("{MINIMAL}\n[engine]\nmodel = \"../models/none.onnx\"\n"));
        assert!(e.contains("engine.model") && e.contains("scripts/fetch-models.sh"), "{e}");
        let dir = tempfile::tempdir().expect("tempdir");
        let model = dir.path().join("m.onnx");
        std::fs::write(&model, "x").expect("write");
        let text = format!("{MINIMAL}\n[engine]\nmodel = {:?}\nthreads = 2\n", model.display().to_string());
        let exp = parse(&text, true).expect("valid");
        let engine = exp.engine.expect("an engine");
        assert_eq!((engine.threads, engine.duration), (2, Duration::from_secs(2)));
        assert!(engine.sessions >= 1);
    }
}
