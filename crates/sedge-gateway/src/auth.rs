//! Who may use the node: the admin credential on `/system/` (and on
//! `/metrics` when closed), and per-function invoke tokens for functions
//! whose manifest says `[auth] invoke = true`.
//!
//! The checks are pure functions of the `Authorization` header and the
//! expected secrets, so they are unit-tested without a server; the
//! middleware only maps their answer to a 401.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use sedge_core::FunctionName;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::{ApiError, Node};

/// Whether the node asks for credentials at all.
#[derive(Clone)]
pub enum Access {
    /// `serve --no-auth`, on loopback only: for tests and local experiments.
    Open,
    /// The admin password; user name [`sedge_store::secrets::ADMIN_USER`].
    Password(Arc<str>),
}

/// What a client presented in its `Authorization` header.
#[derive(Debug, PartialEq, Eq)]
enum Presented {
    Basic { user: String, password: String },
    Bearer(String),
}

fn presented(headers: &HeaderMap) -> Option<Presented> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, rest) = value.split_once(' ')?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD.decode(rest).ok()?;
        let text = String::from_utf8(decoded).ok()?;
        let (user, password) = text.split_once(':')?;
        Some(Presented::Basic { user: user.to_owned(), password: password.to_owned() })
    } else if scheme.eq_ignore_ascii_case("bearer") {
        Some(Presented::Bearer(rest.to_owned()))
    } else {
        None
    }
}

/// Compares through digests so neither the content nor the length of the
/// expected secret shows in the time taken.
fn same_secret(given: &str, expected: &str) -> bool {
    let a = Sha256::digest(given.as_bytes());
    let b = Sha256::digest(expected.as_bytes());
    bool::from(a.ct_eq(&b))
}

fn is_admin(p: &Presented, password: &str) -> bool {
    match p {
        Presented::Basic { user, password: given } => {
            // Both halves are compared every time: no early answer on a wrong user.
            let user_ok = same_secret(user, sedge_store::secrets::ADMIN_USER);
            let password_ok = same_secret(given, password);
            user_ok & password_ok
        }
        Presented::Bearer(token) => same_secret(token, password),
    }
}

/// A function's token, as a bearer token or as the password of Basic auth
/// (so clients that only speak Basic can call it too).
fn is_function_token(p: &Presented, token: &str) -> bool {
    match p {
        Presented::Basic { password, .. } => same_secret(password, token),
        Presented::Bearer(given) => same_secret(given, token),
    }
}

/// Whether `headers` carry the admin credential.
pub fn admin_allowed(access: &Access, headers: &HeaderMap) -> bool {
    match access {
        Access::Open => true,
        Access::Password(password) => presented(headers).is_some_and(|p| is_admin(&p, password)),
    }
}

/// Whether `headers` may call a function that requires invoke auth.
pub fn invoke_allowed(access: &Access, token: Option<&str>, headers: &HeaderMap) -> bool {
    match access {
        Access::Open => true,
        Access::Password(password) => presented(headers)
            .is_some_and(|p| is_admin(&p, password) || token.is_some_and(|t| is_function_token(&p, t))),
    }
}

/// The answer to a missing or wrong credential. It never says which part
/// was wrong, so it cannot be used to guess one part at a time.
pub fn unauthorized(what: &str) -> Response {
    let mut resp = ApiError::new(
        StatusCode::UNAUTHORIZED,
        format!("{what} needs credentials: HTTP Basic admin:PASSWORD or Authorization: Bearer PASSWORD"),
    )
    .into_response();
    resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"sedge\""));
    resp
}

/// Middleware for the routes that need the admin credential.
pub async fn require_admin(State(node): State<Arc<Node>>, req: Request, next: Next) -> Response {
    if admin_allowed(&node.access, req.headers()) {
        next.run(req).await
    } else {
        unauthorized("this route")
    }
}

/// Invoke tokens of the functions that require one, cached from the secret
/// store so a call does not read a file.
#[derive(Default)]
pub struct Tokens {
    by_function: RwLock<HashMap<String, Arc<str>>>,
}

impl Tokens {
    pub fn get(&self, name: &str) -> Option<Arc<str>> {
        self.by_function.read().unwrap_or_else(|p| p.into_inner()).get(name).cloned()
    }

    pub fn set(&self, name: &FunctionName, token: String) {
        self.by_function.write().unwrap_or_else(|p| p.into_inner()).insert(name.to_string(), token.into());
    }

    pub fn remove(&self, name: &FunctionName) {
        self.by_function.write().unwrap_or_else(|p| p.into_inner()).remove(name.as_str());
    }
}

/// Checks a call of function `name`: the refusal, or `None` to go on. A
/// passing credential is taken out of the headers so the function never
/// sees the admin password or its token.
pub fn gate_invoke(node: &Node, name: &str, requires: bool, headers: &mut HeaderMap) -> Option<Response> {
    if !requires {
        return None;
    }
    let token = node.tokens.get(name);
    if invoke_allowed(&node.access, token.as_deref(), headers) {
        headers.remove(header::AUTHORIZATION);
        None
    } else {
        Some(unauthorized(&format!("function {name}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(value).expect("header"));
        h
    }

    fn basic(user: &str, password: &str) -> HeaderMap {
        let enc = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        headers(&format!("Basic {enc}"))
    }

    const PW: &str = "s3cret-pass";

    fn access() -> Access {
        Access::Password(PW.into())
    }

    #[test]
    fn admin_by_basic_or_bearer() {
        assert!(admin_allowed(&access(), &basic("admin", PW)));
        assert!(admin_allowed(&access(), &headers(&format!("Bearer {PW}"))));
        assert!(admin_allowed(&access(), &headers(&format!("bearer   {PW}"))));
    }

    #[test]
    fn everything_else_is_refused() {
        let refused = [
            HeaderMap::new(),
            basic("admin", "wrong"),
            basic("root", PW),
            basic("admin", &format!("{PW}x")),
            basic("admin", ""),
            headers("Bearer "),
            headers("Bearer wrong"),
            headers(PW),
            headers(&format!("Digest {PW}")),
            headers("Basic !!!not-base64"),
        ];
        for h in refused {
            assert!(!admin_allowed(&access(), &h), "{h:?}");
        }
    }

    #[test]
    fn open_access_needs_nothing() {
        assert!(admin_allowed(&Access::Open, &HeaderMap::new()));
        assert!(invoke_allowed(&Access::Open, None, &HeaderMap::new()));
    }

    #[test]
    fn function_token_or_admin_may_invoke() {
        let token = Some("fn-token");
        assert!(invoke_allowed(&access(), token, &headers("Bearer fn-token")));
        assert!(invoke_allowed(&access(), token, &basic("anyone", "fn-token")));
        assert!(invoke_allowed(&access(), token, &basic("admin", PW)));
        assert!(!invoke_allowed(&access(), token, &headers("Bearer other")));
        assert!(!invoke_allowed(&access(), None, &headers("Bearer fn-token")));
        assert!(!invoke_allowed(&access(), token, &HeaderMap::new()));
        // A function token is not an admin credential.
        assert!(!admin_allowed(&access(), &headers("Bearer fn-token")));
    }
}
