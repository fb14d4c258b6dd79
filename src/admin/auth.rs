//! Who may use the dashboard, and proof that a form came from it.
//!
//! The only credential is `ADMIN_TOKEN`. Logging in with it sets a session
//! cookie that carries its own expiry and a MAC of it keyed by the token:
//! nothing is stored server-side, so any `serve` replica accepts it, and
//! changing the token logs everyone out. Scripts may instead send
//! `Authorization: Bearer <token>`.
//!
//! A state change is a POST carrying a CSRF field, a MAC of the session
//! cookie; a page on another site cannot read it, so cannot forge the form.
//! The cookie is also SameSite=Strict, and an Origin header, when sent, must
//! be this host's.

use std::time::Duration;

use axum::http::{HeaderMap, header};
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The session cookie's name.
pub const COOKIE: &str = "sb_admin";

/// How long a login lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);

/// The dashboard's key: `ADMIN_TOKEN`.
#[derive(Clone)]
pub struct Key {
    token: std::sync::Arc<str>,
}

/// A request that presented a valid session or token.
#[derive(Debug, Clone)]
pub struct Session {
    /// What its forms must carry; empty for a bearer token (no cookie to
    /// ride on, so nothing to forge).
    pub csrf: String,
    /// Whether it came with the cookie (and so needs the CSRF field).
    pub by_cookie: bool,
}

impl Key {
    pub fn new(token: &str) -> Self {
        Self {
            token: token.into(),
        }
    }

    fn mac(&self, purpose: &str, value: &str) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(self.token.as_bytes())
            .expect("HMAC takes a key of any length");
        mac.update(purpose.as_bytes());
        mac.update(b"|");
        mac.update(value.as_bytes());
        mac
    }

    fn sign(&self, purpose: &str, value: &str) -> String {
        hex(&self.mac(purpose, value).finalize().into_bytes())
    }

    /// Compares in constant time: a MAC compared byte by byte would tell an
    /// attacker, by the time it takes, how much of a guess was right.
    fn verify(&self, purpose: &str, value: &str, signature: &str) -> bool {
        let Some(bytes) = unhex(signature) else {
            return false;
        };
        self.mac(purpose, value).verify_slice(&bytes).is_ok()
    }

    /// Whether `candidate` is the token, in constant time (both are MACed,
    /// so their lengths do not show either).
    pub fn is_token(&self, candidate: &str) -> bool {
        let expected = self.mac("token", &self.token).finalize().into_bytes();
        self.mac("token", candidate).verify_slice(&expected).is_ok()
    }

    /// A session cookie value valid until `now + SESSION_TTL`.
    pub fn new_session(&self, now: i64) -> String {
        let expires = (now + SESSION_TTL.as_secs() as i64).to_string();
        let mac = self.sign("session", &expires);
        format!("{expires}.{mac}")
    }

    /// The session of a request: a valid unexpired cookie, or the token as
    /// a bearer credential.
    pub fn session(&self, headers: &HeaderMap, now: i64) -> Option<Session> {
        if let Some(token) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
        {
            return self.is_token(token).then(|| Session {
                csrf: String::new(),
                by_cookie: false,
            });
        }
        let cookie = cookie(headers, COOKIE)?;
        let (expires, mac) = cookie.split_once('.')?;
        let alive = expires.parse::<i64>().is_ok_and(|e| e > now);
        (alive && self.verify("session", expires, mac)).then(|| Session {
            csrf: self.sign("csrf", cookie),
            by_cookie: true,
        })
    }

    /// Whether a state-changing request may go on: with a cookie session,
    /// its CSRF field must match and its Origin, if any, be this host.
    pub fn allows_change(&self, session: &Session, headers: &HeaderMap, csrf: &str) -> bool {
        if !session.by_cookie {
            return true;
        }
        // The host the browser addressed: Host, or the X-Forwarded-Host of a
        // proxy that rewrote Host. A page elsewhere cannot set either on a
        // form's POST, so taking either is no opening.
        let same_origin = match headers.get(header::ORIGIN) {
            None => true,
            Some(origin) => origin
                .to_str()
                .ok()
                .and_then(|o| o.split_once("://"))
                .is_some_and(|(_, origin_host)| {
                    [header::HOST.as_str(), "x-forwarded-host"].iter().any(|h| {
                        headers
                            .get(*h)
                            .and_then(|v| v.to_str().ok())
                            .is_some_and(|v| v == origin_host)
                    })
                }),
        };
        same_origin && cookie(headers, COOKIE).is_some_and(|c| self.verify("csrf", c, csrf))
    }
}

/// The value of cookie `name`.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The Set-Cookie value for a session (or, with `None`, one that ends it);
/// `secure` when the browser came over TLS.
pub fn set_cookie(value: Option<&str>, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    match value {
        Some(v) => format!(
            "{COOKIE}={v}; Path=/admin; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
            SESSION_TTL.as_secs()
        ),
        None => format!("{COOKIE}=; Path=/admin; HttpOnly; SameSite=Strict; Max-Age=0{secure}"),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !s.is_ascii() {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn with_cookie(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("other=1; {COOKIE}={value}")).unwrap(),
        );
        h
    }

    #[test]
    fn a_session_is_valid_until_it_expires_and_only_under_its_token() {
        let key = Key::new("0123456789abcdef-token");
        let now = 1_000_000;
        let cookie = key.new_session(now);
        let session = key.session(&with_cookie(&cookie), now).expect("valid");
        assert!(session.by_cookie && !session.csrf.is_empty());
        let later = now + SESSION_TTL.as_secs() as i64;
        assert!(
            key.session(&with_cookie(&cookie), later).is_none(),
            "expired"
        );
        let other = Key::new("another-token-0123456789");
        assert!(
            other.session(&with_cookie(&cookie), now).is_none(),
            "other token"
        );
        // Moving the expiry breaks the MAC.
        let (_, mac) = cookie.split_once('.').unwrap();
        let forged = format!("{}.{mac}", now + 10 * SESSION_TTL.as_secs() as i64);
        assert!(key.session(&with_cookie(&forged), now).is_none(), "forged");
        assert!(key.session(&with_cookie("garbage"), now).is_none());
    }

    #[test]
    fn a_change_needs_the_sessions_csrf_and_the_same_origin() {
        let key = Key::new("0123456789abcdef-token");
        let cookie = key.new_session(0);
        let mut headers = with_cookie(&cookie);
        let session = key.session(&headers, 0).unwrap();
        assert!(key.allows_change(&session, &headers, &session.csrf));
        assert!(!key.allows_change(&session, &headers, "00ff"));
        assert!(!key.allows_change(&session, &headers, ""));
        headers.insert(header::HOST, HeaderValue::from_static("127.0.0.1:8080"));
        headers.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://127.0.0.1:8080"),
        );
        assert!(key.allows_change(&session, &headers, &session.csrf));
        headers.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://evil.example"),
        );
        assert!(!key.allows_change(&session, &headers, &session.csrf));
    }

    #[test]
    fn the_token_as_a_bearer_credential() {
        let key = Key::new("0123456789abcdef-token");
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer 0123456789abcdef-token"),
        );
        assert!(key.session(&h, 0).is_some_and(|s| !s.by_cookie));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer 0123456789abcdef-tokeX"),
        );
        assert!(key.session(&h, 0).is_none());
        assert!(key.is_token("0123456789abcdef-token"));
        assert!(!key.is_token("0123456789abcdef-toke"));
    }
}
