//! A function's own dependencies. A Python function folder with a
//! `requirements.txt`, or a Node.js one with a `package.json`, gets its
//! packages installed on the node at deploy, into an environment kept under
//! the data directory and shared by every version and function with the same
//! inputs ([`Recipe::key`]); downloads go through one cache per installer.
//!
//! [`recipe`] decides what to install from the folder's files (pure);
//! [`build`] runs pip or npm. The gateway asks for an environment before a
//! version serves; the runtime puts it on the worker's module path and in
//! its sandbox view. Neighbours: `sedge-core` (runtime kinds).

pub mod build;
pub mod recipe;
mod share;

use std::path::{Path, PathBuf};

use sedge_core::RuntimeKind;

pub use build::{Builder, Env};
pub use recipe::Recipe;

#[derive(Debug, thiserror::Error)]
pub enum DepsError {
    #[error("{file} line {line}: {why}: {text}")]
    Refused { file: &'static str, line: usize, text: String, why: String },
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{tool} is not available on the node: {hint}")]
    ToolMissing { tool: String, hint: String },
    #[error("installing {file} failed ({status}); its last lines:\n{tail}")]
    Failed { file: &'static str, status: String, tail: String },
    #[error("installing {file} took longer than {seconds} s and was stopped")]
    TimedOut { file: &'static str, seconds: u64 },
    #[error("preparing the environment in {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

impl DepsError {
    /// Whether the function's own files (not the node) are the cause.
    pub fn is_users(&self) -> bool {
        !matches!(self, Self::Io { .. })
    }
}

/// What `bundle` (a function folder of `runtime`) asks to have installed,
/// or `None`. A Node.js folder that carries its own `node_modules` keeps
/// using it.
pub fn detect(runtime: RuntimeKind, bundle: &Path) -> Result<Option<Recipe>, DepsError> {
    match runtime {
        RuntimeKind::Python => python(bundle),
        RuntimeKind::Node => node(bundle),
        _ => Ok(None),
    }
}

fn read(path: &Path) -> Result<Option<Vec<u8>>, DepsError> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(DepsError::Read { path: path.to_owned(), source }),
    }
}

fn text(file: &'static str, bytes: &[u8]) -> Result<String, DepsError> {
    String::from_utf8(bytes.to_vec()).map_err(|_| DepsError::Refused {
        file,
        line: 1,
        text: String::new(),
        why: "the file is not UTF-8".into(),
    })
}

fn python(bundle: &Path) -> Result<Option<Recipe>, DepsError> {
    let Some(requirements) = read(&bundle.join(recipe::REQUIREMENTS))? else { return Ok(None) };
    let checked = recipe::check_requirements(&text(recipe::REQUIREMENTS, &requirements)?)?;
    if requirements.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let mut wheels = Vec::new();
    for rel in checked.wheels.clone() {
        let path = bundle.join(&rel);
        // A link could name a file outside the folder; bundles hold none
        // (unpacking refuses them) but a wheel must be a plain file anyway.
        let meta = std::fs::symlink_metadata(&path).map_err(|source| DepsError::Read { path: path.clone(), source })?;
        if !meta.is_file() {
            return Err(DepsError::Read {
                path,
                source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a plain file"),
            });
        }
        let bytes = std::fs::read(&path).map_err(|source| DepsError::Read { path: path.clone(), source })?;
        wheels.push((rel, sha2::Digest::finalize(<sha2::Sha256 as sha2::Digest>::new_with_prefix(&bytes)).into()));
    }
    let private_sources = checked.private_sources;
    let specifiers = checked.only_specifiers();
    Ok(Some(Recipe::Python { requirements, wheels, private_sources, specifiers }))
}

fn node(bundle: &Path) -> Result<Option<Recipe>, DepsError> {
    if bundle.join("node_modules").is_dir() {
        return Ok(None);
    }
    let Some(package) = read(&bundle.join(recipe::PACKAGE_JSON))? else { return Ok(None) };
    recipe::check_package(recipe::PACKAGE_JSON, &text(recipe::PACKAGE_JSON, &package)?)?;
    let mut lock = None;
    for name in recipe::LOCK_FILES {
        if let Some(bytes) = read(&bundle.join(name))? {
            recipe::check_package(name, &text(name, &bytes)?)?;
            lock = Some((*name, bytes));
            break;
        }
    }
    if !declares_dependencies(&package) {
        return Ok(None);
    }
    Ok(Some(Recipe::Node { package, lock }))
}

/// A package.json with no dependencies (only a name, or `"type"`) needs no
/// install; the check is textual, npm itself reads the file.
fn declares_dependencies(package: &[u8]) -> bool {
    let text = String::from_utf8_lossy(package);
    ["\"dependencies\"", "\"optionalDependencies\""].iter().any(|k| {
        text.split(k).skip(1).any(|rest| {
            let after = rest.trim_start().trim_start_matches(':').trim_start();
            after.starts_with('{') && !after[1..].trim_start().starts_with('}')
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folder(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, text) in files {
            let path = dir.path().join(name);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            std::fs::write(path, text).expect("write");
        }
        dir
    }

    #[test]
    fn python_with_requirements_gets_a_recipe_with_its_wheels() {
        let dir = folder(&[("requirements.txt", "./w/a-1-py3-none-any.whl\nsix\n"), ("w/a-1-py3-none-any.whl", "zip")]);
        match detect(RuntimeKind::Python, dir.path()).expect("detect") {
            Some(Recipe::Python { wheels, .. }) => assert_eq!(wheels[0].0, "w/a-1-py3-none-any.whl"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_missing_wheel_is_named() {
        let dir = folder(&[("requirements.txt", "gone-1-py3-none-any.whl\n")]);
        let err = detect(RuntimeKind::Python, dir.path()).expect_err("missing").to_string();
        assert!(err.contains("gone-1-py3-none-any.whl"), "{err}");
    }

    #[test]
    fn nothing_to_install_is_no_recipe() {
        let empty = folder(&[("requirements.txt", "\n\n")]);
        assert_eq!(detect(RuntimeKind::Python, empty.path()).expect("detect"), None);
        let none = folder(&[("handler.py", "")]);
        assert_eq!(detect(RuntimeKind::Python, none.path()).expect("detect"), None);
        let exec = folder(&[("requirements.txt", "six\n")]);
        assert_eq!(detect(RuntimeKind::Exec, exec.path()).expect("detect"), None);
        let bare = folder(&[("package.json", "{\"name\": \"x\", \"dependencies\": {}}")]);
        assert_eq!(detect(RuntimeKind::Node, bare.path()).expect("detect"), None);
    }

    #[test]
    fn node_uses_its_lock_file_and_keeps_a_shipped_node_modules() {
        let pkg = "{\"dependencies\": {\"is-number\": \"^7.0.0\"}}";
        let dir = folder(&[("package.json", pkg), ("package-lock.json", "{}")]);
        match detect(RuntimeKind::Node, dir.path()).expect("detect") {
            Some(Recipe::Node { lock: Some((name, _)), .. }) => assert_eq!(name, "package-lock.json"),
            other => panic!("{other:?}"),
        }
        let shipped = folder(&[("package.json", pkg), ("node_modules/is-number/index.js", "")]);
        assert_eq!(detect(RuntimeKind::Node, shipped.path()).expect("detect"), None);
    }
}
