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

/// An environment ready for workers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Env {
    /// The folder name under the node's environments: `py-...`, `npm-...`.
    pub key: String,
    /// The environment's folder (bound read-only into sandboxed workers).
    pub root: PathBuf,
    /// What goes on the module search path: the packages folder for
    /// Python, `node_modules` for Node.js.
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

    /// The environment `recipe` describes, built if it does not exist yet;
    /// every output line of the installer goes to `log`.
    pub async fn ensure(
        &self,
        recipe: &Recipe,
        bundle: &Path,
        log: &(dyn Fn(&str) + Send + Sync),
    ) -> Result<Env, DepsError> {
        let tool = self.tool_id(recipe).await?;
        let key = recipe.key(&tool);
        let root = self.envs.join(&key);
        let modules = Self::modules_of(recipe, &root);
        if root.is_dir() {
            return Ok(Env { key, root, modules, reused: true });
        }
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| DepsError::Io { path, source }
        };
        std::fs::create_dir_all(&self.envs).map_err(io(&self.envs))?;
        let tmp = TempDir::new(self.envs.join(format!(".tmp-{key}-{}", unique())));
        std::fs::create_dir(&tmp.0).map_err(io(&tmp.0))?;
        let cmd = match recipe {
            Recipe::Python { .. } => self.pip(bundle, &tmp.0),
            Recipe::Node { package, lock } => {
                std::fs::write(tmp.0.join(crate::recipe::PACKAGE_JSON), package).map_err(io(&tmp.0))?;
                if let Some((name, bytes)) = lock {
                    std::fs::write(tmp.0.join(name), bytes).map_err(io(&tmp.0))?;
                }
                self.npm(&tmp.0, lock.is_some())
            }
        };
        self.run(cmd, recipe.source_file(), log).await?;
        match std::fs::rename(&tmp.0, &root) {
            Ok(()) => tmp.keep(),
            // Built meanwhile by someone else: theirs is as good.
            Err(_) if root.is_dir() => {}
            Err(source) => return Err(DepsError::Io { path: root, source }),
        }
        Ok(Env { key, root, modules, reused: false })
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

    fn pip(&self, bundle: &Path, target: &Path) -> Command {
        let mut cmd = Command::new(&self.python);
        self.installer_env(&mut cmd, Path::new(&self.python).parent());
        cmd.args(["-m", "pip", "install", "--target"])
            .arg(target)
            // Installing a wheel runs none of the package's code; building
            // an sdist would, as the node's user.
            .args(["--only-binary=:all:", "--no-input", "--disable-pip-version-check", "--progress-bar", "off"])
            .args(["--no-warn-script-location", "--cache-dir"])
            .arg(self.cache.join("pip"))
            .args(["-r", crate::recipe::REQUIREMENTS])
            .current_dir(bundle);
        cmd
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
        let out = cmd.output().await.map_err(|e| missing(format!("cannot run it: {e}")))?;
        if !out.status.success() {
            return Err(missing(format!("it exited with {}", out.status)));
        }
        let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        tools.insert(name, id.clone());
        Ok(id)
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
