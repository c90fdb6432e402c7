//! Webhooks the Standard Webhooks way: `webhook-id`, `webhook-timestamp` and
//! `webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">`, keyed with the bytes
//! of a `whsec_<base64>` secret. Callback URLs must lie under an allowed prefix: a gateway
//! that POSTs wherever a caller says is an SSRF hole.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

pub use crate::config::webhook_secret_key as secret_key;

/// The `webhook-signature` header value for one delivery.
pub fn signature(key: &[u8], id: &str, timestamp: u64, body: &[u8]) -> String {
    #[allow(clippy::expect_used)] // HMAC takes keys of any length
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("any key length");
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

/// Whether `url` lies under one of `prefixes`. A prefix matches only at a boundary, so
/// `https://hooks.example.com` does not admit `https://hooks.example.com.evil.net/`; and a
/// URL with credentials, a fragment or a dot segment is refused outright.
pub fn allowed(url: &str, prefixes: &[String]) -> bool {
    let Ok(parsed) = url.parse::<http::Uri>() else {
        return false;
    };
    if !matches!(parsed.scheme_str(), Some("http" | "https"))
        || parsed.authority().is_none_or(|a| a.as_str().contains('@'))
        || url.contains('#')
        || url.contains("/.")
        || url.contains('\\')
        || url.contains("%2e")
        || url.contains("%2E")
    {
        return false;
    }
    prefixes.iter().any(|prefix| {
        url.strip_prefix(prefix.as_str()).is_some_and(|rest| {
            prefix.ends_with('/') || rest.is_empty() || rest.starts_with(['/', '?'])
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_the_standard_webhooks_example() {
        // The example of the Standard Webhooks specification.
        let key = secret_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            signature(&key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn prefixes_match_at_a_boundary_only() {
        let allow = vec!["https://hooks.example.com".to_string()];
        assert!(allowed("https://hooks.example.com/deja", &allow));
        assert!(allowed("https://hooks.example.com", &allow));
        assert!(!allowed("https://hooks.example.com.evil.net/x", &allow));
        assert!(!allowed("https://hooks.example.com@evil.net/x", &allow));
        assert!(!allowed("https://hooks.example.com/../admin", &allow));
        assert!(!allowed("http://169.254.169.254/latest", &allow));
        assert!(!allowed("https://hooks.example.com/x", &[]));
    }
}
