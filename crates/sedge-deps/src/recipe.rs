//! What a function folder asks to have installed, checked before anything
//! runs: a `requirements.txt` beside a Python handler, a `package.json`
//! (with its lock file) beside a Node.js one. Pure: the folder's files come
//! in as bytes, so every rule is unit-tested.
//!
//! The installers run as the node's own user, so what they may read is kept
//! inside the bundle: no `-r other-file`, no paths out of the folder, no
//! environment-variable expansion (pip's `${VAR}` would print the node's
//! variables into the build log), no `file:` references.

use sha2::{Digest, Sha256};

use crate::DepsError;

pub const REQUIREMENTS: &str = "requirements.txt";
pub const PACKAGE_JSON: &str = "package.json";
/// Lock files npm installs exactly from, in the order npm prefers them.
pub const LOCK_FILES: &[&str] = &["npm-shrinkwrap.json", "package-lock.json"];

/// How a function's dependencies are installed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recipe {
    /// `pip install -r requirements.txt`, wheels only.
    Python {
        requirements: Vec<u8>,
        /// Wheel files inside the bundle that requirements.txt names, with
        /// their digests: the environment changes when one does.
        wheels: Vec<(String, [u8; 32])>,
        /// Packages come from an index or URL the function chose: what is
        /// downloaded is not put in the node's shared wheel folder, where
        /// another function asking for the same name would find it.
        private_sources: bool,
        /// Its lines, when all are plain requirement specifiers (`numpy>=2`):
        /// the node's own packages may already satisfy them.
        specifiers: Option<Vec<String>>,
    },
    /// `npm ci` with a lock file, else `npm install`; no install scripts.
    Node { package: Vec<u8>, lock: Option<(&'static str, Vec<u8>)> },
}

impl Recipe {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Python { .. } => "py",
            Self::Node { .. } => "npm",
        }
    }

    /// The file a user edits to change what is installed.
    pub fn source_file(&self) -> &'static str {
        match self {
            Self::Python { .. } => REQUIREMENTS,
            Self::Node { .. } => PACKAGE_JSON,
        }
    }

    /// The environment's folder name: the same inputs on the same
    /// interpreter (`tool`, its version) give the same environment, so a
    /// redeploy or another function with the same requirements reuses it.
    pub fn key(&self, tool: &str) -> String {
        let mut h = Sha256::new();
        let mut part = |bytes: &[u8]| {
            h.update((bytes.len() as u64).to_le_bytes());
            h.update(bytes);
        };
        part(self.kind().as_bytes());
        part(tool.as_bytes());
        match self {
            Self::Python { requirements, wheels, .. } => {
                part(requirements);
                for (path, digest) in wheels {
                    part(path.as_bytes());
                    part(digest);
                }
            }
            Self::Node { package, lock } => {
                part(package);
                if let Some((name, bytes)) = lock {
                    part(name.as_bytes());
                    part(bytes);
                }
            }
        }
        let digest = h.finalize();
        let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
        format!("{}-{hex}", self.kind())
    }
}

/// What a checked requirements file asks for besides plain names.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Requirements {
    /// Wheel files in the folder, relative to it.
    pub wheels: Vec<String>,
    /// It names an index or a URL of its own.
    pub private_sources: bool,
    /// Every line that is a plain requirement specifier.
    pub specifiers: Vec<String>,
    /// Some line is something else (an option, a file, a URL).
    pub other_lines: bool,
}

impl Requirements {
    /// The specifiers, when they are all the file holds.
    pub fn only_specifiers(self) -> Option<Vec<String>> {
        (!self.other_lines && self.wheels.is_empty() && !self.private_sources).then_some(self.specifiers)
    }
}

/// Checks a requirements file: what it may not do is refused, naming the
/// line; the rest is passed to pip as is.
pub fn check_requirements(text: &str) -> Result<Requirements, DepsError> {
    let mut found = Requirements::default();
    for (n, raw) in logical_lines(text) {
        let line = strip_comment(&raw).trim().to_owned();
        if line.is_empty() {
            continue;
        }
        let refuse =
            |why: &str| DepsError::Refused { file: REQUIREMENTS, line: n, text: line.clone(), why: why.to_owned() };
        if line.contains("${") {
            return Err(refuse("environment variables are not expanded in a function's requirements"));
        }
        if line.contains("file:") {
            return Err(refuse("file: references are not installed; put the wheel in the folder and name its path"));
        }
        if line.starts_with('-') {
            found.private_sources |= check_option(&line).map_err(|why| refuse(&why))?;
            found.other_lines = true;
            continue;
        }
        if let Some((_, url)) = line.split_once(" @ ") {
            let url = url.split(';').next().unwrap_or_default().trim();
            if !(url.starts_with("https://") || url.starts_with("http://")) {
                return Err(refuse("a direct reference must be an http(s) URL"));
            }
            found.private_sources = true;
            found.other_lines = true;
            continue;
        }
        if line.contains("://") {
            found.private_sources = true;
        } else if looks_like_path(&line) {
            found.wheels.push(check_wheel_path(&line).map_err(|why| refuse(&why))?);
        } else {
            found.specifiers.push(line);
        }
    }
    Ok(found)
}

/// pip joins a line ending in a backslash with the next one.
fn logical_lines(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut pending: Option<(usize, String)> = None;
    for (i, line) in text.lines().enumerate() {
        let (start, mut acc) = pending.take().unwrap_or((i + 1, String::new()));
        match line.strip_suffix('\\') {
            Some(head) => {
                acc.push_str(head);
                pending = Some((start, acc));
            }
            None => {
                acc.push_str(line);
                out.push((start, acc));
            }
        }
    }
    out.extend(pending);
    out
}

/// A `#` at the start or after whitespace begins a comment, as pip reads it.
fn strip_comment(line: &str) -> &str {
    let bytes = line.as_bytes();
    for (i, b) in bytes.iter().enumerate() {
        if *b == b'#' && (i == 0 || bytes[i - 1].is_ascii_whitespace()) {
            return &line[..i];
        }
    }
    line
}

/// Only options that choose where packages come from (true: a source of
/// the function's own); the rest would read other files, build from source
/// (running a package's code as the node's user) or install editable copies.
fn check_option(line: &str) -> Result<bool, String> {
    let (name, value) = match line.split_once(['=', ' ', '\t']) {
        Some((n, v)) => (n, v.trim()),
        None => (line, ""),
    };
    match name {
        "-i" | "--index-url" | "--extra-index-url" => {
            if value.starts_with("https://") || value.starts_with("http://") {
                Ok(true)
            } else {
                Err(format!("{name} needs an http(s) URL"))
            }
        }
        "--prefer-binary" => Ok(false),
        _ => Err(format!(
            "option {name} is not allowed here (only --index-url and --extra-index-url: packages are installed from wheels, \
             from the index or from files in the folder)"
        )),
    }
}

fn looks_like_path(line: &str) -> bool {
    let first = line.split([' ', ';', '[']).next().unwrap_or_default();
    first.starts_with('.')
        || first.starts_with('/')
        || first.starts_with('~')
        || first.ends_with(".whl")
        || ((first.contains('/') || first.contains('\\')) && !first.contains("://"))
}

fn check_wheel_path(line: &str) -> Result<String, String> {
    let path = line.split([' ', ';']).next().unwrap_or_default();
    if path.starts_with('/') || path.starts_with('~') || path.contains('\\') {
        return Err("a path must be relative to the function's folder".to_owned());
    }
    let clean: Vec<&str> = path.split('/').filter(|c| !c.is_empty() && *c != ".").collect();
    if clean.contains(&"..") {
        return Err("a path must stay inside the function's folder".to_owned());
    }
    if !path.ends_with(".whl") {
        return Err("only wheel files (.whl) are installed from the folder: building from source would run the \
                    package's code on the node"
            .to_owned());
    }
    Ok(clean.join("/"))
}

/// A lock file or package.json that points at files outside what is copied
/// for the install (`file:`, `link:`) cannot be installed reproducibly.
pub fn check_package(file: &'static str, text: &str) -> Result<(), DepsError> {
    for (n, line) in text.lines().enumerate() {
        for bad in ["\"file:", "\"link:"] {
            if line.contains(bad) {
                return Err(DepsError::Refused {
                    file,
                    line: n + 1,
                    text: line.trim().to_owned(),
                    why: format!("{} dependencies are not installed: publish the package or vendor it", &bad[1..]),
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(text: &str) -> String {
        match check_requirements(text) {
            Err(DepsError::Refused { why, line, .. }) => format!("{line}: {why}"),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn plain_specifiers_comments_and_index_options_pass() {
        let text = "# models\nnumpy>=1.24  # arrays\n\nPillow==10.*; python_version >= '3.8'\n\
                    --index-url https://pypi.org/simple\n--extra-index-url=https://example.org/simple\n\
                    requests[socks] @ https://example.org/r.whl\n";
        let found = check_requirements(text).expect("passes");
        assert!(found.wheels.is_empty() && found.private_sources);
        let plain = check_requirements("numpy  # arrays\nsix==1; python_version > '3'\n").expect("passes");
        assert_eq!(plain.only_specifiers().expect("plain"), ["numpy", "six==1; python_version > '3'"]);
        assert_eq!(check_requirements("-i https://x/simple\nnumpy\n").expect("passes").only_specifiers(), None);
    }

    #[test]
    fn wheels_in_the_folder_are_named_and_normalised() {
        let got = check_requirements("./wheels/a-1.0-py3-none-any.whl\nb-2.0-py3-none-any.whl\n").expect("ok");
        assert_eq!(got.wheels, ["wheels/a-1.0-py3-none-any.whl", "b-2.0-py3-none-any.whl"]);
        assert!(!got.private_sources, "files in the folder never enter the shared wheels");
    }

    #[test]
    fn reading_other_files_or_building_from_source_is_refused() {
        assert!(refused("numpy\n-r /etc/shadow\n").starts_with("2: option -r"));
        assert!(refused("-e .\n").contains("-e is not allowed"));
        assert!(refused("--find-links /tmp\n").contains("--find-links"));
        assert!(refused("--no-binary :all:\n").contains("--no-binary"));
        assert!(refused("../other/x.whl\n").contains("inside the function's folder"));
        assert!(refused("/root/x.whl\n").contains("relative"));
        assert!(refused("./src/pkg\n").contains("only wheel files"));
        assert!(refused("x @ file:///etc/passwd\n").contains("file:"));
        assert!(refused("x @ git+ssh://h/r\n").contains("http(s) URL"));
        assert!(refused("-i ftp://x\n").contains("http(s) URL"));
    }

    #[test]
    fn environment_variables_are_never_expanded() {
        assert!(refused("pkg==${SEDGE_PASSWORD}\n").contains("environment variables"));
    }

    #[test]
    fn continued_lines_count_from_their_first_line() {
        assert!(refused("numpy \\\n  >=1\n-c \\\n /x\n").starts_with("3: option -c"));
    }

    #[test]
    fn a_hash_inside_a_url_is_not_a_comment() {
        assert!(check_requirements("x @ https://h/x.whl#sha256=ab\n").is_ok());
    }

    #[test]
    fn keys_change_with_inputs_and_tool_only() {
        let py = |r: &str| Recipe::Python {
            requirements: r.as_bytes().to_vec(),
            wheels: vec![],
            private_sources: false,
            specifiers: None,
        };
        let a = py("numpy\n").key("3.11.7");
        assert_eq!(a, py("numpy\n").key("3.11.7"));
        assert_ne!(a, py("numpy\n").key("3.12.1"));
        assert_ne!(a, py("numpy==2\n").key("3.11.7"));
        assert!(a.starts_with("py-") && a.len() == 3 + 32, "{a}");
        let wheel = Recipe::Python {
            requirements: b"numpy\n".to_vec(),
            wheels: vec![("w.whl".into(), [1; 32])],
            private_sources: false,
            specifiers: None,
        };
        assert_ne!(a, wheel.key("3.11.7"));
        let node = Recipe::Node { package: b"{}".to_vec(), lock: None };
        let locked = Recipe::Node { package: b"{}".to_vec(), lock: Some(("package-lock.json", b"{}".to_vec())) };
        assert_ne!(node.key("v20"), locked.key("v20"));
        assert!(node.key("v20").starts_with("npm-"));
    }

    #[test]
    fn file_and_link_dependencies_are_refused() {
        let pkg = "{\n  \"dependencies\": {\n    \"x\": \"file:../x\"\n  }\n}\n";
        match check_package(PACKAGE_JSON, pkg) {
            Err(DepsError::Refused { line: 3, why, .. }) => assert!(why.contains("file:"), "{why}"),
            other => panic!("{other:?}"),
        }
        assert!(check_package(PACKAGE_JSON, "{\"dependencies\": {\"is-number\": \"^7\"}}").is_ok());
    }
}
