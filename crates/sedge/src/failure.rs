//! How the CLI prints a failure: the message, then each cause once on a
//! line of its own, then what the user can do about it.
//!
//! Library errors often repeat their source in their own text (`cannot
//! read F: No such file`, whose source is `No such file`), so a cause whose
//! text an earlier line already holds is left out. Multi-line texts (TOML's
//! caret excerpt) keep their lines, indented under the line they belong to.

use std::error::Error;
use std::fmt;

/// An error with advice attached: it shows as the error it wraps, and
/// its hint is printed after the causes.
#[derive(Debug)]
pub struct Hinted {
    hint: String,
    inner: Box<dyn Error + Send + Sync>,
}

impl fmt::Display for Hinted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

impl Error for Hinted {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.inner.source()
    }
}

/// Attaches what to do about an error.
pub fn hinted(error: impl Into<anyhow::Error>, hint: impl fmt::Display) -> anyhow::Error {
    anyhow::Error::new(Hinted { hint: hint.to_string(), inner: error.into().into() })
}

pub trait HintExt<T> {
    /// The error, if any, with what to do about it.
    fn hint(self, hint: impl fmt::Display) -> anyhow::Result<T>;
}

impl<T, E: Into<anyhow::Error>> HintExt<T> for Result<T, E> {
    fn hint(self, hint: impl fmt::Display) -> anyhow::Result<T> {
        self.map_err(|e| hinted(e, hint))
    }
}

/// Appends `text` under `label`, its later lines indented below it.
fn push(out: &mut String, label: &str, text: &str) {
    let mut lines = text.lines();
    out.push_str(label);
    out.push_str(lines.next().unwrap_or_default());
    out.push('\n');
    for line in lines {
        out.push_str("    ");
        out.push_str(line);
        out.push('\n');
    }
}

/// The text printed for a failed command.
pub fn render(error: &anyhow::Error) -> String {
    let mut out = String::new();
    let mut shown: Vec<String> = Vec::new();
    let mut hints: Vec<&str> = Vec::new();
    for cause in error.chain() {
        if let Some(h) = cause.downcast_ref::<Hinted>() {
            if !hints.contains(&h.hint.as_str()) {
                hints.push(&h.hint);
            }
        }
        let text = cause.to_string();
        let text = text.trim();
        if text.is_empty() || shown.iter().any(|s| s.contains(text)) {
            continue;
        }
        push(&mut out, if shown.is_empty() { "error: " } else { "  caused by: " }, text);
        shown.push(text.to_owned());
    }
    for h in hints {
        push(&mut out, "  hint: ", h);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    /// A library error that repeats its source in its own text.
    #[derive(Debug)]
    struct ReadError {
        path: String,
        source: std::io::Error,
    }

    impl fmt::Display for ReadError {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "cannot read {}: {}", self.path, self.source)
        }
    }

    impl Error for ReadError {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&self.source)
        }
    }

    fn missing() -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::NotFound, "No such file or directory")
    }

    #[test]
    fn a_cause_the_message_already_holds_is_not_repeated() {
        let e = anyhow::Error::new(ReadError { path: "d/sedge.toml".into(), source: missing() });
        assert_eq!(render(&e), "error: cannot read d/sedge.toml: No such file or directory\n");
    }

    #[test]
    fn causes_and_hint_each_get_a_line() {
        let e: anyhow::Result<()> = Err(missing()).context("reading d/sedge.toml");
        let e = e.hint("d must contain a sedge.toml").context("d has no sedge.toml").expect_err("an error");
        assert_eq!(
            render(&e),
            "error: d has no sedge.toml\n  caused by: reading d/sedge.toml\n  caused by: No such file or directory\n  \
             hint: d must contain a sedge.toml\n"
        );
    }

    #[test]
    fn later_lines_of_a_message_stay_lines() {
        let e = anyhow::anyhow!("f: parse error at line 1\n  |\n1 | x\n  | ^\nexpected `=`");
        assert_eq!(render(&e), "error: f: parse error at line 1\n      |\n    1 | x\n      | ^\n    expected `=`\n");
    }
}
