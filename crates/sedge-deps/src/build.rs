//! Running the installers. Each environment is built in a temporary folder
//! beside its final place and renamed into it only when the install
//! succeeded, so an environment that exists is whole; a build stopped half
//! way (a timeout, the node stopping) leaves only a temporary folder, removed
//! at once or by [`Builder::sweep`] at the next start.
//!
//! Installers run with a cleared environment: the node's own variables
//! (its admin password among them) never reach pip, npm or their logs.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use crate::{DepsError, Recipe};

/// Prints `yes` when every requirement in argv is met by an installed
/// distribution (markers that do not apply are skipped).
const SATISFIED: &str = r#"
import sys
import importlib.metadata as md
try:
    from packaging.requirements import Requirement
except ImportError:
    from pip._vendor.packaging.requirements import Requirement
for line in sys.argv[1:]:
    r = Requirement(line)
    if r.marker is not None and not r.marker.evaluate():
        continue
    try:
        version = md.version(r.name)
    except md.PackageNotFoundError:
        print("no")
        sys.exit(0)
    if r.extras or r.url or not r.specifier.contains(version, prereleases=True):
        print("no")
        sys.exit(0)
print("yes")
"#;

/// Lines of installer output quoted when an install fails.
const TAIL: usize = 20;
/// Longer output lines are cut in the failure message.
const LINE: usize = 400;

/// Variables an installer may need from the node: proxies, a mirror, CA files.
const PASSED_ENV: &[&str] = &[
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "PIP_INDEX_URL",
    "PIP_EXTRA_INDEX_URL",
    "PIP_TRUSTED_HOST",
    "PIP_CERT",
    "NPM_CONFIG_REGISTRY",
    "npm_config_registry",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "REQUESTS_CA_BUNDLE",
];

enum PipStep<'a> {
    /// Every wheel the requirements need, into a folder of this build's.
    Download(&'a Path),
    /// From those and the node's wheel folder only.
    Install { target: &'a Path, fetched: &'a Path },
}

/// An environment ready for workers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Env {
    /// The folder name under the node's environments: `py-...`, `npm-...`.
    pub key: String,
    /// What goes on the module search path (and is bound read-only into
    /// sandboxed workers): the packages folder for Python, `node_modules`
    /// for Node.js.
    pub modules: PathBuf,
    /// It existed already: nothing was installed.
    pub reused: bool,
}

/// Builds and keeps the node's environments.
pub struct Builder {
    envs: PathBuf,
    cache: PathBuf,
    python: String,
    node: String,
    timeout: Duration,
    /// Interpreter versions, asked once: an environment is built for one.
    tools: tokio::sync::Mutex<HashMap<&'static str, String>>,
}

impl Builder {
    /// Environments go in `envs`, the installers' download caches in `cache`.
    pub fn new(envs: PathBuf, cache: PathBuf, python: String, node: String, timeout: Duration) -> Self {
        Self { envs, cache, python, node, timeout, tools: Default::default() }
    }

    fn modules_of(recipe: &Recipe, root: &Path) -> PathBuf {
        match recipe {
            Recipe::Python { .. } => root.to_owned(),
            Recipe::Node { .. } => root.join("node_modules"),
        }
    }

    /// The environment `recipe` describes, if it was built already.
    pub async fn existing(&self, recipe: &Recipe) -> Result<Option<Env>, DepsError> {
        let key = recipe.key(&self.tool_id(recipe).await?);
        let root = self.envs.join(&key);
        let modules = Self::modules_of(recipe, &root);
        Ok(root.is_dir().then_some(Env { key, modules, reused: true }))
    }

    /// The environment `recipe` describes, built if it does not exist yet;
    /// every output line of the installer goes to `log`.
    pub async fn ensure(
        &self,
        recipe: &Recipe,
        bundle: &Path,
        log: &(dyn Fn(&str) + Send + Sync),
    ) -> Result<Env, DepsError> {
        if let Some(env) = self.existing(recipe).await? {
            return Ok(env);
        }
        let key = recipe.key(&self.tool_id(recipe).await?);
        let root = self.envs.join(&key);
        let modules = Self::modules_of(recipe, &root);
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| DepsError::Io { path, source }
        };
        std::fs::create_dir_all(&self.envs).map_err(io(&self.envs))?;
        let tmp = TempDir::new(self.envs.join(format!(".tmp-{key}-{}", unique())));
        std::fs::create_dir(&tmp.0).map_err(io(&tmp.0))?;
        let file = recipe.source_file();
        match recipe {
            Recipe::Python { wheels, private_sources, .. } => {
                // From the node's wheel folder alone when it has every wheel
                // needed (no network); else fetched first, then installed
                // from what was fetched.
                // Its output is only worth showing if it worked.
                let held = std::sync::Mutex::new(Vec::new());
                let hold = |line: &str| held.lock().unwrap_or_else(|p| p.into_inner()).push(line.to_owned());
                let offline = PipStep::Install { target: &tmp.0, fetched: &self.cache.join("wheels") };
                if !private_sources && self.run(self.pip(bundle, offline), file, &hold).await.is_ok() {
                    held.into_inner().unwrap_or_else(|p| p.into_inner()).iter().for_each(|l| log(l));
                    log("every wheel needed was already on the node: installed without fetching");
                } else {
                    self.fetch_and_install(bundle, &tmp.0, wheels, *private_sources, log).await?;
                }
            }
            Recipe::Node { package, lock } => {
                std::fs::write(tmp.0.join(crate::recipe::PACKAGE_JSON), package).map_err(io(&tmp.0))?;
                if let Some((name, bytes)) = lock {
                    std::fs::write(tmp.0.join(name), bytes).map_err(io(&tmp.0))?;
                }
                self.run(self.npm(&tmp.0, lock.is_some()), file, log).await?;
            }
        }
        let (store, built) = (self.cache.join("files"), tmp.0.clone());
        let shared = tokio::task::spawn_blocking(move || crate::share::share_files(&built, &store))
            .await
            .map_err(|e| DepsError::Io { path: tmp.0.clone(), source: std::io::Error::other(e) })?
            .map_err(io(&tmp.0))?;
        if shared.files > 0 {
            log(&format!(
                "{} files ({} MiB) are shared with other environments, not stored again",
                shared.files,
                shared.bytes >> 20
            ));
        }
        match std::fs::rename(&tmp.0, &root) {
            Ok(()) => tmp.keep(),
            // Built meanwhile by someone else: theirs is as good.
            Err(_) if root.is_dir() => {}
            Err(source) => return Err(DepsError::Io { path: root, source }),
        }
        Ok(Env { key, modules, reused: false })
    }

    fn installer_env(&self, cmd: &mut Command, tool_dir: Option<&Path>) {
        cmd.env_clear();
        let mut path = String::new();
        if let Some(dir) = tool_dir {
            path.push_str(&dir.to_string_lossy());
            path.push(':');
        }
        path.push_str("/usr/local/bin:/usr/bin:/bin");
        cmd.env("PATH", path).env("HOME", self.cache.join("home")).env("LANG", "C.UTF-8");
        for key in PASSED_ENV {
            if let Some(v) = std::env::var_os(key) {
                cmd.env(key, v);
            }
        }
    }

    fn pip(&self, bundle: &Path, step: PipStep<'_>) -> Command {
        let wheels = self.cache.join("wheels");
        let mut cmd = Command::new(&self.python);
        self.installer_env(&mut cmd, Path::new(&self.python).parent());
        cmd.args(["-m", "pip"]);
        match step {
            PipStep::Download(dest) => cmd.args(["download", "--dest"]).arg(dest),
            PipStep::Install { target, fetched } => cmd
                .args(["install", "--no-index", "--no-warn-script-location", "--root-user-action=ignore", "--target"])
                .arg(target)
                .arg("--find-links")
                .arg(fetched),
        };
        cmd.arg("--find-links")
            .arg(&wheels)
            // Installing a wheel runs none of the package's code; building
            // an sdist would, as the node's user.
            .args(["--only-binary=:all:", "--no-input", "--disable-pip-version-check", "--progress-bar", "off"])
            .arg("--cache-dir")
            .arg(self.cache.join("pip"))
            .args(["-r", crate::recipe::REQUIREMENTS])
            .current_dir(bundle);
        cmd
    }

    /// Fetches every wheel `bundle`'s requirements need into a folder of
    /// this build's (keeping index wheels for the next build unless the
    /// function chose its own sources), then installs from it into `target`.
    async fn fetch_and_install(
        &self,
        bundle: &Path,
        target: &Path,
        own: &[(String, [u8; 32])],
        private_sources: bool,
        log: &(dyn Fn(&str) + Send + Sync),
    ) -> Result<(), DepsError> {
        let file = crate::recipe::REQUIREMENTS;
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| DepsError::Io { path, source }
        };
        // The offline attempt may have left part of an install behind.
        std::fs::remove_dir_all(target).map_err(io(target))?;
        std::fs::create_dir(target).map_err(io(target))?;
        let fetched = TempDir::new(self.cache.join(format!(".tmp-download-{}", unique())));
        std::fs::create_dir_all(&fetched.0).map_err(io(&fetched.0))?;
        // pip fetches only what its destination lacks: the node's wheels are
        // linked there first (links, not copies: the same file system).
        for entry in std::fs::read_dir(self.cache.join("wheels")).into_iter().flatten().flatten() {
            let _ = std::fs::hard_link(entry.path(), fetched.0.join(entry.file_name()));
        }
        self.run(self.pip(bundle, PipStep::Download(&fetched.0)), file, log).await?;
        if !private_sources {
            let own: HashSet<&str> = own.iter().filter_map(|(p, _)| p.rsplit('/').next()).collect();
            self.keep_wheels(&fetched.0, &own).map_err(io(&fetched.0))?;
        }
        self.run(self.pip(bundle, PipStep::Install { target, fetched: &fetched.0 }), file, log).await
    }

    /// Moves wheels fetched from the node's index into its wheel folder for
    /// the next build; the function's own files (`own`) stay out of it.
    fn keep_wheels(&self, fetched: &Path, own: &HashSet<&str>) -> std::io::Result<()> {
        let wheels = self.cache.join("wheels");
        std::fs::create_dir_all(&wheels)?;
        for entry in std::fs::read_dir(fetched)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.ends_with(".whl") || own.contains(name.as_str()) || wheels.join(&name).exists() {
                continue;
            }
            std::fs::rename(entry.path(), wheels.join(&name))?;
        }
        Ok(())
    }

    fn npm_program(&self) -> PathBuf {
        let node = Path::new(&self.node);
        match node.parent().filter(|p| !p.as_os_str().is_empty()) {
            Some(dir) => dir.join("npm"),
            None => PathBuf::from("npm"),
        }
    }

    fn npm(&self, dir: &Path, locked: bool) -> Command {
        let mut cmd = Command::new(self.npm_program());
        let node_dir = Path::new(&self.node).parent().filter(|p| !p.as_os_str().is_empty());
        self.installer_env(&mut cmd, node_dir);
        cmd.arg(if locked { "ci" } else { "install" });
        if !locked {
            cmd.arg("--no-package-lock");
        }
        cmd.args(["--ignore-scripts", "--omit=dev", "--no-audit", "--no-fund", "--no-update-notifier", "--cache"])
            .arg(self.cache.join("npm"))
            .current_dir(dir);
        cmd
    }

    async fn run(
        &self,
        mut cmd: Command,
        file: &'static str,
        log: &(dyn Fn(&str) + Send + Sync),
    ) -> Result<(), DepsError> {
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true).process_group(0);
        let program = cmd.as_std().get_program().to_string_lossy().into_owned();
        let mut child = cmd.spawn().map_err(|e| DepsError::ToolMissing {
            tool: program.clone(),
            hint: format!("cannot run it ({e}); {}", install_hint(file)),
        })?;
        let group = child.id();
        let mut tail = VecDeque::new();
        let mut emit = |line: String| {
            log(&line);
            if tail.len() == TAIL {
                tail.pop_front();
            }
            tail.push_back(clip(line));
        };
        let (Some(out), Some(err)) = (child.stdout.take(), child.stderr.take()) else {
            return Err(DepsError::Io { path: program.into(), source: std::io::Error::other("no output pipes") });
        };
        let work = async {
            let (mut out, mut err) = (BufReader::new(out).lines(), BufReader::new(err).lines());
            let (mut out_open, mut err_open) = (true, true);
            while out_open || err_open {
                tokio::select! {
                    line = out.next_line(), if out_open => match line {
                        Ok(Some(l)) => emit(l),
                        _ => out_open = false,
                    },
                    line = err.next_line(), if err_open => match line {
                        Ok(Some(l)) => emit(l),
                        _ => err_open = false,
                    },
                }
            }
            child.wait().await
        };
        let status = match tokio::time::timeout(self.timeout, work).await {
            Ok(Ok(status)) => status,
            Ok(Err(source)) => return Err(DepsError::Io { path: program.into(), source }),
            Err(_) => {
                kill_group(group);
                return Err(DepsError::TimedOut { file, seconds: self.timeout.as_secs() });
            }
        };
        // Whatever the installer left running (npm's git) goes with it.
        kill_group(group);
        if status.success() {
            return Ok(());
        }
        let tail: Vec<String> = tail.into();
        let mut tail = tail.join("\n");
        if tail.contains("No module named pip") {
            tail.push_str(&format!("\n({})", install_hint(file)));
        }
        Err(DepsError::Failed { file, status: status.to_string(), tail })
    }

    async fn tool_id(&self, recipe: &Recipe) -> Result<String, DepsError> {
        let (name, program, args): (&'static str, &str, &[&str]) = match recipe {
            Recipe::Python { .. } => (
                "python",
                &self.python,
                &["-c", "import sys, sysconfig; print(sys.version.split()[0], sysconfig.get_platform(), sys.abiflags)"],
            ),
            Recipe::Node { .. } => ("node", &self.node, &["--version"]),
        };
        let mut tools = self.tools.lock().await;
        if let Some(id) = tools.get(name) {
            return Ok(id.clone());
        }
        let missing = |why: String| DepsError::ToolMissing { tool: program.to_owned(), hint: why };
        let mut cmd = Command::new(program);
        cmd.args(args).stdin(Stdio::null()).kill_on_drop(true);
        // Asked under the lock every build takes: an interpreter that hangs
        // must not hold all deploys with it.
        let out = match tokio::time::timeout(Duration::from_secs(30), cmd.output()).await {
            Ok(out) => out.map_err(|e| missing(format!("cannot run it: {e}")))?,
            Err(_) => return Err(missing("it did not say its version within 30 s".to_owned())),
        };
        if !out.status.success() {
            return Err(missing(format!("it exited with {}", out.status)));
        }
        let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        tools.insert(name, id.clone());
        Ok(id)
    }

    /// Whether the node's own Python already has every package `recipe`
    /// names, at an allowed version: then its workers use those, as a
    /// virtual environment with the system's packages would, and nothing is
    /// installed. Anything unclear (extras, a parse error) says no.
    pub async fn satisfied_by_node(&self, recipe: &Recipe) -> bool {
        let Recipe::Python { specifiers: Some(lines), .. } = recipe else { return false };
        let mut cmd = Command::new(&self.python);
        self.installer_env(&mut cmd, None);
        cmd.args(["-c", SATISFIED]).args(lines).stdin(Stdio::null()).kill_on_drop(true);
        match tokio::time::timeout(Duration::from_secs(30), cmd.output()).await {
            Ok(Ok(out)) => out.status.success() && out.stdout.trim_ascii() == b"yes",
            _ => false,
        }
    }

    /// Removes the environment `key` (when no function uses it any more).
    pub fn remove(&self, key: &str) -> Result<(), DepsError> {
        let root = self.envs.join(key);
        match std::fs::remove_dir_all(&root) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(DepsError::Io { path: root, source }),
        }
    }

    /// Removes shared files no environment holds any more.
    pub fn sweep_files(&self) -> Result<usize, DepsError> {
        let store = self.cache.join("files");
        crate::share::sweep(&store).map_err(|source| DepsError::Io { path: store, source })
    }

    /// Removes half-built environments and those no function in `keep`
    /// uses; returns how many went.
    pub fn sweep(&self, keep: &HashSet<String>) -> Result<usize, DepsError> {
        let entries = match std::fs::read_dir(&self.envs) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(source) => return Err(DepsError::Io { path: self.envs.clone(), source }),
        };
        let mut removed = 0;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !keep.contains(&name) {
                self.remove(&name)?;
                removed += 1;
            }
        }
        // Downloads of builds cut short.
        for entry in std::fs::read_dir(&self.cache).into_iter().flatten().flatten() {
            if entry.file_name().to_string_lossy().starts_with(".tmp-") {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        Ok(removed)
    }
}

fn install_hint(file: &str) -> &'static str {
    if file == crate::recipe::REQUIREMENTS {
        "the node's Python needs pip (Debian: apt-get install python3-pip, or serve with --python pointing into a virtual environment)"
    } else {
        "the node needs npm beside node (Debian: apt-get install npm)"
    }
}

fn clip(mut line: String) -> String {
    if line.len() > LINE {
        let mut cut = LINE;
        while !line.is_char_boundary(cut) {
            cut -= 1;
        }
        line.truncate(cut);
        line.push('…');
    }
    line
}

fn kill_group(pid: Option<u32>) {
    if let Some(pgid) = pid.and_then(|p| i32::try_from(p).ok()) {
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid), nix::sys::signal::Signal::SIGKILL);
    }
}

fn unique() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    format!("{}-{nanos}", std::process::id())
}

/// A folder removed when dropped unless kept: a build cancelled at any
/// await leaves nothing behind.
struct TempDir(PathBuf, bool);

impl TempDir {
    fn new(path: PathBuf) -> Self {
        Self(path, false)
    }

    fn keep(mut self) {
        self.1 = true;
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !self.1 {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}
