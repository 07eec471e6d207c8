//! Names users choose: function names are DNS labels and secret names
//! DNS subdomains (as OpenFaaS, on Kubernetes, names them), so either is
//! safe in URLs, file names and metrics.

use std::fmt;

/// A validated function name: 1–63 characters of `a-z`, `0-9` and `-`,
/// starting and ending with a letter or digit.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FunctionName(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid function name {name:?}: {problem}")]
pub struct NameError {
    pub name: String,
    pub problem: &'static str,
}

impl FunctionName {
    pub fn parse(name: &str) -> Result<Self, NameError> {
        let fail = |problem| Err(NameError { name: name.to_owned(), problem });
        if name.is_empty() {
            return fail("it is empty");
        }
        if name.len() > 63 {
            return fail("it is longer than 63 characters");
        }
        if !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
            return fail("use only lower-case letters, digits and '-' (a DNS label)");
        }
        if name.starts_with('-') || name.ends_with('-') {
            return fail("it must start and end with a letter or digit");
        }
        Ok(Self(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for FunctionName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A validated secret name: 1–253 characters of `a-z`, `0-9`, `-` and `.`,
/// starting and ending with a letter or digit, never `..`: safe as a file name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SecretName(String);

impl SecretName {
    pub fn parse(name: &str) -> Result<Self, NameError> {
        let fail = |problem| Err(NameError { name: name.to_owned(), problem });
        let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        if name.is_empty() {
            return fail("it is empty");
        }
        if name.len() > 253 {
            return fail("it is longer than 253 characters");
        }
        if !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.') {
            return fail("use only lower-case letters, digits, '-' and '.'");
        }
        if !edge(name.chars().next()) || !edge(name.chars().last()) || name.contains("..") {
            return fail("it must start and end with a letter or digit and not hold '..'");
        }
        Ok(Self(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SecretName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_dns_labels() {
        for ok in ["a", "hello-python", "f1", "0x", &"a".repeat(63)] {
            assert!(FunctionName::parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn refuses_everything_else() {
        for bad in ["", "-a", "a-", "Hello", "a_b", "a.b", "../x", "a b", &"a".repeat(64)] {
            assert!(FunctionName::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn secret_names() {
        for ok in ["db-password", "a", "api.key", "x1"] {
            assert!(SecretName::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", "UPPER", "../x", "a/b", "-a", "a-", ".hidden", "a..b", &"x".repeat(254)] {
            assert!(SecretName::parse(bad).is_err(), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn valid_names_are_path_safe(s in "\\PC*") {
            if let Ok(n) = FunctionName::parse(&s) {
                prop_assert!(!n.as_str().contains('/') && !n.as_str().contains('.'));
            }
        }
    }
}
