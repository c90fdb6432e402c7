//! Dashboard sessions: the login form trades the admin token for a random session id, kept in
//! a cookie marked HttpOnly and SameSite=Strict (and Secure behind HTTPS), so the token never
//! sits in a URL or in the page's JavaScript. Each session has a CSRF token that state-changing
//! calls made with the cookie must echo in `x-deja-csrf`. A session dies after `LIFETIME_MS`,
//! on logout, or when the admin token changes (a reload that rotates it logs everyone out).

use std::collections::HashMap;

use parking_lot::Mutex;
use sha2::{Digest, Sha256};

pub const COOKIE: &str = "deja_session";
pub const CSRF_HEADER: &str = "x-deja-csrf";
const LIFETIME_MS: u64 = 12 * 3600 * 1000;
/// Sessions kept at once; past it the oldest goes.
const MAX_SESSIONS: usize = 256;

struct Session {
    csrf: String,
    created_ms: u64,
    /// Digest of the admin token it was opened with.
    token: [u8; 32],
}

/// Live sessions by the digest of their id (the id itself is never stored).
#[derive(Default)]
pub struct Sessions {
    live: Mutex<HashMap<[u8; 32], Session>>,
}

pub fn digest(text: &str) -> [u8; 32] {
    Sha256::digest(text.as_bytes()).into()
}

/// 32 random bytes as hex, from the operating system's generator.
fn random_hex() -> Option<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).ok()?;
    Some(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

impl Sessions {
    /// Opens a session for a caller who presented `token`; returns its id and CSRF token.
    pub fn open(&self, token: &str, now_ms: u64) -> Option<(String, String)> {
        let (id, csrf) = (random_hex()?, random_hex()?);
        let mut live = self.live.lock();
        live.retain(|_, s| now_ms.saturating_sub(s.created_ms) < LIFETIME_MS);
        if live.len() >= MAX_SESSIONS
            && let Some(oldest) = live
                .iter()
                .min_by_key(|(_, s)| s.created_ms)
                .map(|(k, _)| *k)
        {
            live.remove(&oldest);
        }
        live.insert(
            digest(&id),
            Session {
                csrf: csrf.clone(),
                created_ms: now_ms,
                token: digest(token),
            },
        );
        Some((id, csrf))
    }

    /// The CSRF token of the live session the cookie names, if any, opened with `token`.
    pub fn check(&self, id: &str, token: &str, now_ms: u64) -> Option<String> {
        let live = self.live.lock();
        let session = live.get(&digest(id))?;
        (now_ms.saturating_sub(session.created_ms) < LIFETIME_MS && session.token == digest(token))
            .then(|| session.csrf.clone())
    }

    pub fn close(&self, id: &str) {
        self.live.lock().remove(&digest(id));
    }
}

/// The session id in a request's `Cookie` headers.
pub fn session_id(headers: &http::HeaderMap) -> Option<String> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_string())
}

/// The `Set-Cookie` value for a session (`None`: the logout cookie that clears it). `secure`
/// when the page was reached over HTTPS (a TLS proxy in front says `X-Forwarded-Proto`).
pub fn cookie(id: Option<&str>, secure: bool) -> String {
    let (value, age) = match id {
        Some(id) => (id, LIFETIME_MS / 1000),
        None => ("", 0),
    };
    let secure = if secure { "; Secure" } else { "" };
    format!("{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={age}{secure}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_follow_the_token_and_expire() {
        let sessions = Sessions::default();
        let (id, csrf) = sessions.open("admin-token-1234567", 0).unwrap();
        assert_eq!(id.len(), 64);
        assert_ne!(id, csrf);
        assert_eq!(sessions.check(&id, "admin-token-1234567", 1000), Some(csrf));
        assert_eq!(sessions.check(&id, "rotated-token-12345", 1000), None);
        assert_eq!(
            sessions.check(&id, "admin-token-1234567", LIFETIME_MS),
            None
        );
        assert_eq!(sessions.check("forged", "admin-token-1234567", 1000), None);
        sessions.close(&id);
        assert_eq!(sessions.check(&id, "admin-token-1234567", 1000), None);
    }

    #[test]
    fn cookie_flags_and_parsing() {
        let set = cookie(Some("abc"), true);
        assert!(set.contains("HttpOnly") && set.contains("SameSite=Strict"));
        assert!(set.ends_with("; Secure"));
        assert!(!cookie(Some("abc"), false).contains("Secure"));
        let mut headers = http::HeaderMap::new();
        headers.insert(
            http::header::COOKIE,
            http::HeaderValue::from_static("a=1; deja_session=xyz; b=2"),
        );
        assert_eq!(session_id(&headers).as_deref(), Some("xyz"));
    }
}
