//! `sedge.toml`: the user's manifest, checked field by field and normalised
//! into the locked [`FunctionSpec`] that the node runs.
//!
//! Parsing happens in two steps so every message can name the file, the field
//! and what was expected: serde reads the raw shape (rejecting unknown
//! fields), then [`FunctionSpec::from_raw`] checks each value.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use crate::async_policy::{AsyncSpec, RawAsync};
use crate::model::{ModelSpec, RawBatching, RawModel};
use crate::name::{FunctionName, SecretName};
use crate::trigger::{RawTrigger, TriggerSpec};

/// The file name a function folder must contain.
pub const MANIFEST_FILE: &str = "sedge.toml";

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_MAX_BODY: u64 = 8 * 1024 * 1024;
/// Largest answer a worker may give: big enough for images and tensors,
/// small enough that a runaway function cannot take the node's memory.
const DEFAULT_MAX_ANSWER: u64 = 64 * 1024 * 1024;
/// The protocol's own frame limit; a larger cap could not be honoured.
const MAX_MAX_ANSWER: u64 = 1024 * 1024 * 1024;
/// Waiting requests per function before 429: deep enough to absorb a burst of
/// many users against a few workers, shallow enough that a stuck function
/// answers "busy" instead of piling up memory.
const DEFAULT_QUEUE: u32 = 256;
const DEFAULT_MAX_WORKERS: u32 = 4;
/// Calls a loaded model takes at once, queued and batched inside it.
const MODEL_CONCURRENCY: u32 = 1024;
const DEFAULT_IDLE: Duration = Duration::from_secs(300);
const MAX_TIMEOUT: Duration = Duration::from_secs(3600);
/// Processes (threads included: that is what the kernel counts) a worker
/// may have at once: room for an interpreter's own threads and a few
/// helpers, too few for a fork bomb to hurt the node.
pub const DEFAULT_PIDS: u32 = 64;
/// Processes beyond one thread per concurrent call, when the concurrency
/// sets the default.
const PIDS_HEADROOM: u32 = 32;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("{file}: {message}")]
    Syntax { file: String, message: String },
    #[error("{file}: field `{field}`: {problem}")]
    Field { file: String, field: String, problem: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RuntimeKind {
    Python,
    Node,
    Exec,
    /// A long-running process serving HTTP itself on `$PORT` (of-watchdog's
    /// http mode, Knative's container contract).
    Http,
    /// An ONNX model the node serves itself; the handler is the model file.
    Onnx,
}

impl RuntimeKind {
    /// Whether functions of this kind are a model the node serves itself.
    pub fn serves_models(self) -> bool {
        self == Self::Onnx
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Python => "python",
            Self::Node => "node",
            Self::Exec => "exec",
            Self::Http => "http",
            Self::Onnx => "onnx",
        }
    }
}

/// How the function's code expects to be called: sedge's own shape, or that
/// of the framework it was written for, so such code runs unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    Sedge,
    OpenFaas,
    Kubeless,
    Fission,
    FuncX,
}

impl Style {
    pub const ALL: [Style; 5] = [Self::Sedge, Self::OpenFaas, Self::Kubeless, Self::Fission, Self::FuncX];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sedge => "sedge",
            Self::OpenFaas => "openfaas",
            Self::Kubeless => "kubeless",
            Self::Fission => "fission",
            Self::FuncX => "funcx",
        }
    }

    /// Whether code of this style can be written in `runtime`'s language.
    fn fits(self, runtime: RuntimeKind) -> bool {
        match runtime {
            RuntimeKind::Python => true,
            RuntimeKind::Node => self != Self::FuncX,
            // A command or an HTTP server is called the same way whatever
            // it was written for.
            RuntimeKind::Exec | RuntimeKind::Http => matches!(self, Self::Sedge | Self::OpenFaas),
            // A model is called as the node serves it, not as any framework's code.
            RuntimeKind::Onnx => self == Self::Sedge,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Covers queueing plus execution.
    pub timeout: Duration,
    pub max_body: u64,
    /// Largest answer body taken from a worker; past it the call answers 502.
    pub max_answer: u64,
    /// Memory a worker (with all it started) may use; enforced by the
    /// node's sandbox where the host allows it.
    pub memory: Option<u64>,
    /// Processes and threads a worker may have at once.
    pub pids: u32,
    /// CPU time a worker may use, in thousandths of a core.
    pub cpu_millis: Option<u32>,
    /// Requests allowed to wait for a worker before the answer is 429.
    pub queue: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scale {
    pub min: u32,
    pub max: u32,
    /// Requests one worker serves at a time.
    pub concurrency: u32,
    /// How long a worker may sit unneeded before the pool shrinks.
    pub idle: Duration,
    /// In-flight requests per worker the autoscaler aims at (1 to `concurrency`).
    pub target: u32,
    /// Thousandths of a core one busy worker keeps busy, counted against
    /// the node's cores (`Some(0)`: not CPU-bound). Unset, the node decides
    /// by what the function is (a `concurrency = 1` ML function is).
    pub cpu_millis: Option<u32>,
}

/// The locked form of a manifest: every value checked, every default filled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionSpec {
    pub name: FunctionName,
    pub runtime: RuntimeKind,
    pub handler: String,
    pub style: Style,
    pub limits: Limits,
    pub scale: Scale,
    pub env: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// Secrets the node gives this function as files, by name.
    pub secrets: Vec<SecretName>,
    pub auth: Auth,
    /// A model function's `[model]` and `[batching]`.
    pub model: Option<ModelSpec>,
    /// The model functions this function's code may call (`models = [...]`).
    pub models: Vec<FunctionName>,
    /// How its queued (asynchronous) calls are retried and run (`[async]`).
    pub async_calls: AsyncSpec,
    /// Events that queue calls of it (`[[triggers]]`).
    pub triggers: Vec<TriggerSpec>,
    /// Which nodes of a cluster run it (`[placement]`); a single node ignores it.
    pub placement: Placement,
}

/// Where in a cluster a function runs: on nodes carrying every one of
/// `labels`, at most `replicas` of them (all matching ones when unset).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Placement {
    pub labels: Vec<String>,
    pub replicas: Option<u32>,
}

/// Who may call the function.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Auth {
    /// Callers need the admin credential or the function's own token.
    pub invoke: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    name: String,
    runtime: String,
    handler: String,
    style: Option<String>,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    scale: RawScale,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
    #[serde(default)]
    secrets: Vec<String>,
    #[serde(default)]
    auth: RawAuth,
    model: Option<RawModel>,
    batching: Option<RawBatching>,
    #[serde(default)]
    models: Vec<String>,
    #[serde(default, rename = "async")]
    async_calls: RawAsync,
    #[serde(default)]
    triggers: Vec<RawTrigger>,
    #[serde(default)]
    placement: RawPlacement,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPlacement {
    #[serde(default)]
    labels: Vec<String>,
    replicas: Option<i64>,
}

impl RawPlacement {
    fn check(self) -> Result<Placement, (String, String)> {
        for (i, l) in self.labels.iter().enumerate() {
            if !is_node_label(l) {
                return Err((
                    format!("placement.labels[{i}]"),
                    format!("a label is 1 to 63 letters, digits, '-', '_' or '.', found {l:?}"),
                ));
            }
        }
        let replicas = match self.replicas {
            None => None,
            Some(n) if (1..=1000).contains(&n) => Some(n as u32),
            Some(n) => return Err(("placement.replicas".into(), format!("must be from 1 to 1000, found {n}"))),
        };
        Ok(Placement { labels: self.labels, replicas })
    }
}

/// A node label as `serve --labels` and `[placement] labels` take it.
pub fn is_node_label(l: &str) -> bool {
    (1..=63).contains(&l.len()) && l.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    #[serde(default)]
    invoke: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    timeout: Option<String>,
    max_body: Option<String>,
    max_answer: Option<String>,
    memory: Option<String>,
    queue: Option<i64>,
    pids: Option<i64>,
    cpu: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScale {
    min: Option<i64>,
    max: Option<i64>,
    concurrency: Option<i64>,
    idle: Option<String>,
    target: Option<i64>,
    cpu: Option<f64>,
}

/// Field checks report into this, so each message carries the file name.
struct Checker<'a> {
    file: &'a str,
}

impl Checker<'_> {
    fn fail<T>(&self, field: &str, problem: impl Into<String>) -> Result<T, ManifestError> {
        Err(ManifestError::Field { file: self.file.to_owned(), field: field.to_owned(), problem: problem.into() })
    }

    fn duration(&self, field: &str, value: Option<&str>, default: Duration) -> Result<Duration, ManifestError> {
        let Some(text) = value else { return Ok(default) };
        match humantime::parse_duration(text) {
            Ok(d) if d.is_zero() => self.fail(field, "must be longer than zero"),
            Ok(d) => Ok(d),
            Err(_) => {
                self.fail(field, format!("expected a duration like \"500ms\", \"30s\" or \"5m\", found {text:?}"))
            }
        }
    }

    fn size(&self, field: &str, value: Option<&str>) -> Result<Option<u64>, ManifestError> {
        let Some(text) = value else { return Ok(None) };
        match text.trim().parse::<bytesize::ByteSize>() {
            Ok(s) if s.as_u64() == 0 => self.fail(field, "must be larger than zero"),
            Ok(s) => Ok(Some(s.as_u64())),
            Err(_) => {
                self.fail(field, format!("expected a size like \"512KiB\", \"8MiB\" or \"1GiB\", found {text:?}"))
            }
        }
    }

    fn cores(&self, field: &str, value: Option<f64>) -> Result<Option<u32>, ManifestError> {
        let Some(cores) = value else { return Ok(None) };
        if !(0.01..=1024.0).contains(&cores) {
            return self.fail(field, format!("expected a number of cores from 0.01 to 1024, like 0.5, found {cores}"));
        }
        // In range, so the rounded value fits.
        Ok(Some((cores * 1000.0).round() as u32))
    }

    fn count(&self, field: &str, value: Option<i64>, default: u32, range: (u32, u32)) -> Result<u32, ManifestError> {
        let Some(n) = value else { return Ok(default) };
        match u32::try_from(n) {
            Ok(n) if (range.0..=range.1).contains(&n) => Ok(n),
            _ => self.fail(field, format!("expected a whole number from {} to {}, found {n}", range.0, range.1)),
        }
    }
}

impl FunctionSpec {
    /// Parses the text of a manifest; `file` names it in every error.
    pub fn parse(file: &str, text: &str) -> Result<Self, ManifestError> {
        let raw: RawManifest = toml::from_str(text).map_err(|e| ManifestError::Syntax {
            file: file.to_owned(),
            // Kept on several lines: the caret excerpt points at the column.
            message: e.to_string().trim_end().to_owned(),
        })?;
        Self::from_raw(file, raw)
    }

    fn from_raw(file: &str, raw: RawManifest) -> Result<Self, ManifestError> {
        let c = Checker { file };
        let name = match FunctionName::parse(&raw.name) {
            Ok(n) => n,
            Err(e) => return c.fail("name", e.to_string()),
        };
        let runtime = match raw.runtime.as_str() {
            "python" => RuntimeKind::Python,
            "node" => RuntimeKind::Node,
            "exec" => RuntimeKind::Exec,
            "http" => RuntimeKind::Http,
            "onnx" => RuntimeKind::Onnx,
            other => {
                return c.fail("runtime", format!("expected one of python, node, exec, http, onnx; found {other:?}"))
            }
        };
        check_handler(&c, runtime, &raw.handler)?;
        let style_name = raw.style.as_deref().unwrap_or("sedge");
        let Some(style) = Style::ALL.into_iter().find(|s| s.as_str() == style_name) else {
            return c.fail(
                "style",
                format!("expected one of sedge, openfaas, kubeless, fission, funcx; found {style_name:?}"),
            );
        };
        if !style.fits(runtime) {
            return c.fail(
                "style",
                format!("style {:?} is not available for runtime {:?}", style.as_str(), runtime.as_str()),
            );
        }
        let mut limits = Limits {
            timeout: c.duration("limits.timeout", raw.limits.timeout.as_deref(), DEFAULT_TIMEOUT)?,
            max_body: c.size("limits.max_body", raw.limits.max_body.as_deref())?.unwrap_or(DEFAULT_MAX_BODY),
            max_answer: c.size("limits.max_answer", raw.limits.max_answer.as_deref())?.unwrap_or(DEFAULT_MAX_ANSWER),
            memory: c.size("limits.memory", raw.limits.memory.as_deref())?,
            queue: c.count("limits.queue", raw.limits.queue, DEFAULT_QUEUE, (0, 1_000_000))?,
            // Given a default below, once the concurrency is known.
            pids: c.count("limits.pids", raw.limits.pids, 0, (4, 1_000_000))?,
            cpu_millis: c.cores("limits.cpu", raw.limits.cpu)?,
        };
        if limits.timeout > MAX_TIMEOUT {
            return c.fail("limits.timeout", "must be at most 1h");
        }
        if limits.max_answer == 0 || limits.max_answer > MAX_MAX_ANSWER {
            return c.fail("limits.max_answer", "must be from 1B to 1GiB");
        }
        // A model's one worker is the loaded model, which takes many calls
        // at once (its own queue batches them); a second would load it again.
        let (default_max, default_concurrency) =
            if runtime == RuntimeKind::Onnx { (1, MODEL_CONCURRENCY) } else { (DEFAULT_MAX_WORKERS, 1) };
        let max = c.count("scale.max", raw.scale.max, default_max, (1, 1024))?;
        let scale = Scale {
            min: c.count("scale.min", raw.scale.min, 0, (0, max))?,
            max,
            concurrency: c.count("scale.concurrency", raw.scale.concurrency, default_concurrency, (1, 1024))?,
            idle: c.duration("scale.idle", raw.scale.idle.as_deref(), DEFAULT_IDLE)?,
            target: 0,
            cpu_millis: match raw.scale.cpu {
                Some(0.0) => Some(0),
                other => c.cores("scale.cpu", other)?,
            },
        };
        let mut scale = scale;
        scale.target = c.count("scale.target", raw.scale.target, scale.concurrency, (1, scale.concurrency))?;
        if limits.pids == 0 {
            // A worker serving many calls at once runs a thread for each.
            limits.pids = DEFAULT_PIDS.max(scale.concurrency.saturating_add(PIDS_HEADROOM));
        }
        for key in raw.env.keys() {
            let ok = !key.is_empty()
                && !key.starts_with(|ch: char| ch.is_ascii_digit())
                && key.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '_');
            if !ok {
                return c.fail(
                    &format!("env.{key}"),
                    "names may hold only letters, digits and '_', not starting with a digit",
                );
            }
        }
        let mut secrets = Vec::with_capacity(raw.secrets.len());
        for (i, text) in raw.secrets.iter().enumerate() {
            let secret = match SecretName::parse(text) {
                Ok(n) => n,
                Err(e) => return c.fail(&format!("secrets[{i}]"), e.to_string()),
            };
            if secrets.contains(&secret) {
                return c.fail(&format!("secrets[{i}]"), format!("{text:?} is listed twice"));
            }
            secrets.push(secret);
        }
        let model = match (raw.model, raw.batching) {
            (None, None) => None,
            (model, batching) if runtime.serves_models() => {
                match ModelSpec::from_raw(model.unwrap_or_default(), batching) {
                    Ok(m) => Some(m),
                    Err((field, problem)) => return c.fail(&field, problem),
                }
            }
            (model, _) => {
                let table = if model.is_some() { "model" } else { "batching" };
                return c.fail(
                    table,
                    format!("[{table}] is for model functions (runtime = \"onnx\"), not {}", runtime.as_str()),
                );
            }
        };
        let models = check_models(&c, runtime, &name, &raw.models)?;
        let async_calls = match raw.async_calls.check() {
            Ok(a) => a,
            Err((field, problem)) => return c.fail(&field, problem),
        };
        let placement = match raw.placement.check() {
            Ok(p) => p,
            Err((field, problem)) => return c.fail(&field, problem),
        };
        let mut triggers = Vec::with_capacity(raw.triggers.len());
        for (i, t) in raw.triggers.into_iter().enumerate() {
            match t.check(i) {
                Ok(t) => triggers.push(t),
                Err((field, problem)) => return c.fail(&field, problem),
            }
        }
        Ok(Self {
            triggers,
            placement,
            async_calls,
            model,
            models,
            name,
            runtime,
            handler: raw.handler,
            style,
            limits,
            scale,
            env: raw.env,
            labels: raw.labels,
            annotations: raw.annotations,
            secrets,
            auth: Auth { invoke: raw.auth.invoke },
        })
    }

    /// The words of an `exec` or `http` handler's command line.
    pub fn command_words(&self) -> Vec<String> {
        shlex::split(&self.handler).unwrap_or_default()
    }
}

/// The models a function may call: named functions, each once; only code
/// running in a language worker calls them.
fn check_models(
    c: &Checker<'_>,
    runtime: RuntimeKind,
    name: &FunctionName,
    raw: &[String],
) -> Result<Vec<FunctionName>, ManifestError> {
    if !raw.is_empty() && !matches!(runtime, RuntimeKind::Python | RuntimeKind::Node) {
        return c.fail(
            "models",
            format!("only python and node functions call models; this one is runtime {:?}", runtime.as_str()),
        );
    }
    let mut models = Vec::with_capacity(raw.len());
    for (i, text) in raw.iter().enumerate() {
        let model = match FunctionName::parse(text) {
            Ok(n) => n,
            Err(e) => return c.fail(&format!("models[{i}]"), e.to_string()),
        };
        if models.contains(&model) {
            return c.fail(&format!("models[{i}]"), format!("{text:?} is listed twice"));
        }
        if &model == name {
            return c.fail(&format!("models[{i}]"), "a function cannot call itself as a model");
        }
        models.push(model);
    }
    Ok(models)
}

fn check_handler(c: &Checker<'_>, runtime: RuntimeKind, handler: &str) -> Result<(), ManifestError> {
    match runtime {
        RuntimeKind::Onnx => {
            let safe = handler.ends_with(".onnx")
                && !handler.starts_with('/')
                && !handler.split('/').any(|part| part.is_empty() || part == "..")
                && handler.chars().all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '_' | '.' | '-' | '/'));
            if safe {
                Ok(())
            } else {
                c.fail(
                    "handler",
                    format!("expected the model file in the function's folder, e.g. \"model.onnx\", found {handler:?}"),
                )
            }
        }
        RuntimeKind::Exec | RuntimeKind::Http => match shlex::split(handler) {
            Some(words) if !words.is_empty() => Ok(()),
            _ => c.fail("handler", format!("expected a command line such as \"python3 main.py\", found {handler:?}")),
        },
        RuntimeKind::Python | RuntimeKind::Node => {
            let shape = if runtime == RuntimeKind::Python {
                "module.function, e.g. \"handler.handle\""
            } else {
                "file.export, e.g. \"handler.handle\", or a module whose module.exports is the function, e.g. \"handler.js\""
            };
            let safe = !handler.is_empty()
                && !handler.contains("..")
                && !handler.starts_with(['/', '.'])
                && handler.chars().all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '_' | '.' | '-' | '/' | '$'));
            // Node.js also takes a module alone ("handler", "handler.js"), the
            // way OpenFaaS's and Fission's node functions are written.
            let module_only = runtime == RuntimeKind::Node
                && (!handler.contains('.') || handler.ends_with(".js") || handler.ends_with(".cjs"));
            let ok = safe
                && (module_only
                    || handler.rsplit_once('.').is_some_and(|(module, func)| !module.is_empty() && !func.is_empty()));
            if ok {
                Ok(())
            } else {
                c.fail("handler", format!("expected {shape}, found {handler:?}"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<FunctionSpec, ManifestError> {
        FunctionSpec::parse("fn/sedge.toml", text)
    }

    fn field_error(text: &str) -> (String, String) {
        match parse(text) {
            Err(ManifestError::Field { field, problem, .. }) => (field, problem),
            other => panic!("expected a field error, got {other:?}"),
        }
    }

    const MINIMAL: &str = "name = \"hello\"\nruntime = \"python\"\nhandler = \"handler.handle\"\n";

    #[test]
    fn scale_cpu_and_target_are_read() {
        let spec = parse(&format!("{MINIMAL}[scale]\ncpu = 1.0\nconcurrency = 4\ntarget = 2\n")).expect("valid");
        assert_eq!((spec.scale.cpu_millis, spec.scale.target), (Some(1000), 2));
        let spec = parse(&format!("{MINIMAL}[scale]\ncpu = 0\n")).expect("valid");
        assert_eq!(spec.scale.cpu_millis, Some(0), "0 says: not CPU-bound");
    }

    #[test]
    fn minimal_manifest_gets_defaults() {
        let spec = parse(MINIMAL).expect("valid");
        assert_eq!(spec.name.as_str(), "hello");
        assert_eq!(spec.style, Style::Sedge);
        assert_eq!(spec.limits.timeout, DEFAULT_TIMEOUT);
        assert_eq!(spec.limits.max_body, DEFAULT_MAX_BODY);
        assert_eq!(spec.limits.max_answer, DEFAULT_MAX_ANSWER);
        assert_eq!(spec.limits.queue, DEFAULT_QUEUE);
        assert_eq!(spec.limits.pids, DEFAULT_PIDS);
        assert_eq!(spec.limits.cpu_millis, None);
        let busy = parse(&format!("{MINIMAL}[scale]\nconcurrency = 100\n")).expect("valid");
        assert_eq!(busy.limits.pids, 132, "a thread per concurrent call, and room besides");
        assert_eq!(
            spec.scale,
            Scale { min: 0, max: 4, concurrency: 1, idle: DEFAULT_IDLE, target: 1, cpu_millis: None }
        );
    }

    #[test]
    fn full_manifest() {
        let spec = parse(&format!(
            "{MINIMAL}style = \"sedge\"\n[limits]\ntimeout = \"500ms\"\nmax_body = \"1MiB\"\nmax_answer = \"2MiB\"\nmemory = \"512MiB\"\nqueue = 3\npids = 16\ncpu = 0.5\n\
             [scale]\nmin = 1\nmax = 2\nconcurrency = 4\nidle = \"5m\"\n[env]\nMODEL = \"x\"\n"
        ))
        .expect("valid");
        assert_eq!(spec.limits.timeout, Duration::from_millis(500));
        assert_eq!(spec.limits.max_body, 1024 * 1024);
        assert_eq!(spec.limits.max_answer, 2 * 1024 * 1024);
        assert_eq!(spec.limits.memory, Some(512 * 1024 * 1024));
        assert_eq!(spec.limits.queue, 3);
        assert_eq!(spec.limits.pids, 16);
        assert_eq!(spec.limits.cpu_millis, Some(500));
        assert_eq!(
            spec.scale,
            Scale { min: 1, max: 2, concurrency: 4, idle: Duration::from_secs(300), target: 4, cpu_millis: None }
        );
        assert_eq!(spec.env.get("MODEL").map(String::as_str), Some("x"));
        assert!(spec.secrets.is_empty() && !spec.auth.invoke);
    }

    #[test]
    fn placement_takes_labels_and_replicas_and_names_a_bad_field() {
        let spec =
            parse(&format!("{MINIMAL}[placement]\nlabels = [\"gpu\", \"arm64\"]\nreplicas = 2\n")).expect("parses");
        assert_eq!(spec.placement, Placement { labels: vec!["gpu".into(), "arm64".into()], replicas: Some(2) });
        assert_eq!(parse(MINIMAL).expect("parses").placement, Placement::default());
        let e = parse(&format!("{MINIMAL}[placement]\nreplicas = 0\n")).expect_err("zero replicas");
        assert!(e.to_string().contains("placement.replicas"), "{e}");
        let e = parse(&format!("{MINIMAL}[placement]\nlabels = [\"a b\"]\n")).expect_err("bad label");
        assert!(e.to_string().contains("placement.labels[0]"), "{e}");
    }

    #[test]
    fn secrets_and_invoke_auth() {
        let spec = parse(&format!("{MINIMAL}secrets = [\"db-password\", \"api.key\"]\n[auth]\ninvoke = true\n"))
            .expect("valid");
        let names: Vec<&str> = spec.secrets.iter().map(|s| s.as_str()).collect();
        assert_eq!(names, ["db-password", "api.key"]);
        assert!(spec.auth.invoke);
    }

    #[test]
    fn models_a_function_calls() {
        let spec = parse(&format!("{MINIMAL}models = [\"digits\", \"effnet\"]\n")).expect("valid");
        let names: Vec<&str> = spec.models.iter().map(|m| m.as_str()).collect();
        assert_eq!(names, ["digits", "effnet"]);
        assert!(parse(MINIMAL).expect("valid").models.is_empty());
    }

    #[test]
    fn errors_name_the_field_and_expectation() {
        let cases = [
            ("name = \"Bad_Name\"\nruntime = \"python\"\nhandler = \"a.b\"", "name", "DNS label"),
            ("name = \"a\"\nruntime = \"ruby\"\nhandler = \"a.b\"", "runtime", "python, node, exec, http"),
            ("name = \"a\"\nruntime = \"python\"\nhandler = \"nodot\"", "handler", "module.function"),
            ("name = \"a\"\nruntime = \"exec\"\nhandler = \"\"", "handler", "command line"),
            (&format!("{MINIMAL}style = \"knative\""), "style", "sedge, openfaas"),
            ("name = \"a\"\nruntime = \"node\"\nhandler = \"a.b\"\nstyle = \"funcx\"", "style", "not available"),
            (&format!("{MINIMAL}[limits]\ntimeout = \"soon\""), "limits.timeout", "duration"),
            (&format!("{MINIMAL}[limits]\ntimeout = \"0s\""), "limits.timeout", "zero"),
            (&format!("{MINIMAL}[limits]\nmax_body = \"lots\""), "limits.max_body", "size"),
            (&format!("{MINIMAL}[limits]\nmax_answer = \"2GiB\""), "limits.max_answer", "1GiB"),
            (&format!("{MINIMAL}[limits]\npids = 1"), "limits.pids", "from 4"),
            (&format!("{MINIMAL}[limits]\ncpu = 0"), "limits.cpu", "cores"),
            (&format!("{MINIMAL}[scale]\nmax = 0"), "scale.max", "from 1"),
            (&format!("{MINIMAL}[scale]\nmin = 5\nmax = 2"), "scale.min", "from 0 to 2"),
            (&format!("{MINIMAL}[scale]\nconcurrency = -1"), "scale.concurrency", "whole number"),
            (&format!("{MINIMAL}[scale]\nconcurrency = 2\ntarget = 3"), "scale.target", "from 1 to 2"),
            (&format!("{MINIMAL}[scale]\ncpu = -1.0"), "scale.cpu", "number of cores"),
            (&format!("{MINIMAL}[env]\n\"A-B\" = \"x\""), "env.A-B", "letters"),
            (&format!("{MINIMAL}secrets = [\"ok\", \"../etc\"]"), "secrets[1]", "lower-case"),
            (&format!("{MINIMAL}secrets = [\"a\", \"a\"]"), "secrets[1]", "twice"),
            (&format!("{MINIMAL}models = [\"digits\", \"Effnet\"]"), "models[1]", "DNS label"),
            (&format!("{MINIMAL}models = [\"digits\", \"digits\"]"), "models[1]", "twice"),
            (&format!("{MINIMAL}models = [\"hello\"]"), "models[0]", "itself"),
            ("name = \"a\"\nruntime = \"exec\"\nhandler = \"true\"\nmodels = [\"m\"]", "models", "python and node"),
            (&format!("{MINIMAL}[async]\nmax_attempts = 0"), "async.max_attempts", "from 1 to 100"),
            (&format!("{MINIMAL}[async]\nmax_age = \"later\""), "async.max_age", "duration"),
            (&format!("{MINIMAL}[async]\nmax_age = \"30days\""), "async.max_age", "14 days"),
            (&format!("{MINIMAL}[async]\nretry_on = [\"502\", \"oops\"]"), "async.retry_on[1]", "\"timeout\""),
            (&format!("{MINIMAL}[async]\nretry_on = [\"302\"]"), "async.retry_on[0]", "400 to 599"),
            (&format!("{MINIMAL}[async]\nconcurrency = 0"), "async.concurrency", "from 1 to 1024"),
        ];
        for (text, field, expect) in cases {
            let (got_field, problem) = field_error(text);
            assert_eq!(got_field, field, "{text}");
            assert!(problem.contains(expect), "{problem:?} should mention {expect:?}");
        }
    }

    #[test]
    fn unknown_fields_and_bad_toml_name_the_file() {
        for text in [format!("{MINIMAL}colour = 1"), "name = ".to_owned(), format!("{MINIMAL}[scale]\nmaximum = 3")] {
            let err = parse(&text).expect_err("invalid");
            let msg = err.to_string();
            assert!(msg.starts_with("fn/sedge.toml:"), "{msg}");
        }
        let msg = parse(&format!("{MINIMAL}colour = 1")).expect_err("invalid").to_string();
        assert!(msg.contains("colour"), "{msg}");
    }

    #[test]
    fn async_table_and_its_defaults() {
        use crate::async_policy::{RetryClass, DEFAULT_RETRY_ON};
        let spec = parse(MINIMAL).expect("valid");
        assert_eq!(spec.async_calls, AsyncSpec::default());
        assert_eq!(spec.async_calls.retry_on, DEFAULT_RETRY_ON);
        assert_eq!(spec.async_calls.concurrency_for(4), 2);
        assert_eq!(spec.async_calls.concurrency_for(1), 1);
        let spec = parse(&format!(
            "{MINIMAL}[async]\nmax_attempts = 5\nmax_age = \"10m\"\nretry_on = [\"500\", \"timeout\", \"4xx\"]\nconcurrency = 3\n"
        ))
        .expect("valid");
        let a = spec.async_calls;
        assert_eq!((a.max_attempts, a.max_age, a.concurrency), (5, Duration::from_secs(600), Some(3)));
        assert_eq!(a.retry_on, [RetryClass::Status(500), RetryClass::Timeout, RetryClass::Any4xx]);
        assert!(parse(&format!("{MINIMAL}[async]\nretries = 2")).expect_err("unknown").to_string().contains("retries"));
    }

    #[test]
    fn node_takes_a_module_alone() {
        for handler in ["handler.js", "hello", "lib/fn.cjs", "handler.handle"] {
            let text = format!("name = \"n\"\nruntime = \"node\"\nhandler = \"{handler}\"");
            assert!(parse(&text).is_ok(), "{handler}");
        }
        for handler in ["../x.js", "/abs.js", ".js", "a."] {
            let text = format!("name = \"n\"\nruntime = \"node\"\nhandler = \"{handler}\"");
            assert!(parse(&text).is_err(), "{handler}");
        }
        // Python still needs module.function.
        assert!(parse("name = \"p\"\nruntime = \"python\"\nhandler = \"handler\"").is_err());
    }

    #[test]
    fn exec_command_words_split_like_a_shell() {
        let spec = parse("name = \"e\"\nruntime = \"exec\"\nhandler = \"python3 -c 'print(1)'\"").expect("valid");
        assert_eq!(spec.command_words(), ["python3", "-c", "print(1)"]);
    }
}
