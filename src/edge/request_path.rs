//! Which request paths deja accepts. A path must have one spelling only: `/v1/../x` or
//! `/v1/%2e%2e/x` would reach any path of the upstream host with deja's own key, and
//! `/v1//chat/completions`, `/v1/chat/completions/` or `/v1/chat/%63ompletions` would reach
//! the chat route as a relay, with no cache and no token or budget limits. Such paths are
//! refused with a 400 rather than normalised: no client needs them, and an upstream that reads
//! them differently from deja can never be handed one.

use crate::error::ApiError;

/// Checks `path` (as received, percent-encoded). Refuses empty segments (`//`, a trailing
/// `/`), dot segments (`.`, `..`, also percent-encoded), backslashes, malformed
/// percent-escapes and escapes of characters that need none (letters, digits, `-._~`) or that
/// separate segments (`/`, `\`).
pub fn check(path: &str) -> Result<(), ApiError> {
    let Some(segments) = path.strip_prefix('/') else {
        return refuse(path, "it does not start with '/'");
    };
    for segment in segments.split('/') {
        if segment.is_empty() {
            return refuse(path, "it has an empty segment ('//' or a trailing '/')");
        }
        if segment.contains('\\') {
            return refuse(path, "it contains a backslash");
        }
        let decoded = decode_segment(segment).map_err(|why| refusal(path, why))?;
        if decoded == "." || decoded == ".." {
            return refuse(path, "it has a dot segment ('.' or '..')");
        }
    }
    Ok(())
}

/// The segment with its escapes decoded, or why an escape is refused.
fn decode_segment(segment: &str) -> Result<String, &'static str> {
    let bytes = segment.as_bytes();
    let mut decoded = String::with_capacity(segment.len());
    let mut at = 0;
    while at < bytes.len() {
        if bytes[at] != b'%' {
            decoded.push(char::from(bytes[at]));
            at += 1;
            continue;
        }
        let byte = bytes
            .get(at + 1..at + 3)
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok())
            .ok_or("it has a malformed percent-escape")?;
        if byte.is_ascii_alphanumeric() || b"-._~/\\".contains(&byte) {
            return Err("it percent-encodes a character that must be sent as it is");
        }
        decoded.push('%');
        at += 3;
    }
    Ok(decoded)
}

fn refusal(path: &str, why: &str) -> ApiError {
    ApiError::invalid(
        format!("Invalid URL path {path}: {why}. Send the path in its canonical form."),
        None,
    )
}

fn refuse(path: &str, why: &str) -> Result<(), ApiError> {
    Err(refusal(path, why))
}

#[cfg(test)]
mod tests {
    use super::check;

    #[test]
    fn canonical_paths_pass() {
        for path in [
            "/v1",
            "/v1/chat/completions",
            "/v1/files/file-abc123/content",
            "/v1/models/ft:gpt-4o-mini:org:custom:id",
            "/v1/vector_stores/vs_1/files",
            "/v1/x%20y",
            "/v1/a.b/..c/...",
        ] {
            assert!(check(path).is_ok(), "{path}");
        }
    }

    #[test]
    fn ambiguous_paths_are_refused() {
        for path in [
            "/v1/../x",
            "/v1/./chat/completions",
            "/v1/%2e%2e/x",
            "/v1/%2E%2e/x",
            "/v1/.%2E/x",
            "/v1/%2e",
            "/v1/..",
            "/v1//chat/completions",
            "/v1/chat/completions/",
            "/v1/",
            "/v1/chat/%63ompletions",
            "/v1/chat%2Fcompletions",
            "/v1/chat%5ccompletions",
            "/v1/chat\\completions",
            "/v1/chat/completions%",
            "/v1/chat/completions%4",
            "/v1/chat/completions%zz",
            "v1/chat",
        ] {
            assert!(check(path).is_err(), "{path}");
        }
    }
}
