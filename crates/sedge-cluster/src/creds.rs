//! How a node proves itself to NATS (`serve --cluster-creds FILE`): the
//! file holds either `user:password` on one line, an nkey user seed (a
//! line starting with `SU`), or a NATS `.creds` file (a user JWT and its
//! seed, as `nsc` writes them).

use std::path::Path;

#[derive(Debug, PartialEq, Eq)]
pub enum Creds {
    UserPassword {
        user: String,
        password: String,
    },
    NkeySeed(String),
    /// A `.creds` file, read by the NATS client itself.
    CredsFile,
}

#[derive(Debug, thiserror::Error)]
pub enum CredsError {
    #[error("--cluster-creds: cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error(
        "--cluster-creds: {path} holds neither `user:password` on one line, an nkey user seed (SU...), nor a NATS .creds file"
    )]
    Unknown { path: String },
}

pub fn read(path: &Path) -> Result<Creds, CredsError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| CredsError::Read { path: path.display().to_string(), source })?;
    parse(&text).ok_or_else(|| CredsError::Unknown { path: path.display().to_string() })
}

pub fn parse(text: &str) -> Option<Creds> {
    if text.contains("-----BEGIN NATS USER JWT-----") {
        return Some(Creds::CredsFile);
    }
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect();
    let [line] = lines.as_slice() else { return None };
    if line.starts_with("SU") && !line.contains(':') && line.len() > 50 {
        return Some(Creds::NkeySeed((*line).to_owned()));
    }
    let (user, password) = line.split_once(':')?;
    if user.is_empty() || password.is_empty() {
        return None;
    }
    Some(Creds::UserPassword { user: user.to_owned(), password: password.to_owned() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_form_is_told_apart() {
        assert_eq!(
            parse("# node creds\nsedge:s3cret:with-colon\n"),
            Some(Creds::UserPassword { user: "sedge".into(), password: "s3cret:with-colon".into() })
        );
        let seed = "SUAMLK2ZNL35WSMW37E7UD4VZ7ELPKW7DHC3BWBSD2GCZ7IUQQXZIORRBU";
        assert_eq!(parse(&format!("{seed}\n")), Some(Creds::NkeySeed(seed.into())));
        assert_eq!(parse("-----BEGIN NATS USER JWT-----\nx\n------END NATS USER JWT------\n"), Some(Creds::CredsFile));
        assert_eq!(parse(""), None);
        assert_eq!(parse("user:"), None);
        assert_eq!(parse("a:b\nc:d\n"), None);
    }
}
