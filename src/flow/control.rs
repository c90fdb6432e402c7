//! What a request may ask of the cache (`Cache-Control`, `x-deja-*` headers) and whose cache
//! it reads (the tenant). No request-controlled value can widen what a request may hit: the
//! namespace only narrows, the threshold header only raises.

use http::HeaderMap;
use http::header::{self, HeaderName};

use crate::cache::Partition;
use crate::config::KeyConfig;
use crate::error::ApiError;

use crate::wire::headers::{NAMESPACE as NAMESPACE_HEADER, THRESHOLD as THRESHOLD_HEADER};

const MAX_NAMESPACE_LEN: usize = 128;

/// Credentials and account selectors that decide whose cache a request reads.
const TENANT_HEADERS: [&str; 4] = [
    "authorization",
    "api-key",
    "openai-organization",
    "openai-project",
];

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Controls {
    /// `Cache-Control: no-cache`: do not answer from the cache, but store the answer.
    pub no_cache: bool,
    /// `Cache-Control: no-store`: do not store the answer.
    pub no_store: bool,
    /// `Cache-Control: max-age=N`: only entries younger than N seconds (never shortens what
    /// this request stores: others rely on that entry).
    pub max_age_secs: Option<u64>,
    /// From `x-deja-threshold`, already validated to (0, 1].
    pub threshold: Option<f32>,
    /// From `x-deja-namespace`; empty when absent.
    pub namespace: String,
}

impl Controls {
    pub fn from_headers(headers: &HeaderMap) -> Result<Controls, ApiError> {
        let mut controls = Controls::default();
        for value in headers.get_all(header::CACHE_CONTROL) {
            let value = value
                .to_str()
                .map_err(|_| ApiError::invalid("Cache-Control is not ASCII", None))?;
            for directive in value.split(',').map(str::trim) {
                let (name, arg) = match directive.split_once('=') {
                    Some((name, arg)) => (name.trim(), Some(arg.trim().trim_matches('"'))),
                    None => (directive, None),
                };
                match (name.to_ascii_lowercase().as_str(), arg) {
                    ("no-cache", _) => controls.no_cache = true,
                    ("no-store", _) => controls.no_store = true,
                    ("max-age", Some(arg)) => {
                        let secs = arg.parse::<u64>().map_err(|_| {
                            ApiError::invalid(
                                format!("Cache-Control max-age must be whole seconds, got {arg:?}"),
                                None,
                            )
                        })?;
                        controls.max_age_secs = Some(secs);
                    }
                    _ => {}
                }
            }
        }
        if let Some(value) = header_text(headers, THRESHOLD_HEADER)? {
            let threshold = value
                .parse::<f32>()
                .ok()
                .filter(|t| t.is_finite() && *t > 0.0 && *t <= 1.0)
                .ok_or_else(|| {
                    ApiError::invalid(
                        format!(
                            "{THRESHOLD_HEADER} is a cosine similarity in (0, 1], got {value:?}"
                        ),
                        None,
                    )
                })?;
            controls.threshold = Some(threshold);
        }
        if let Some(value) = header_text(headers, NAMESPACE_HEADER)? {
            let valid = value.len() <= MAX_NAMESPACE_LEN
                && value
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.:/".contains(c));
            if !valid {
                return Err(ApiError::invalid(
                    format!(
                        "{NAMESPACE_HEADER} must be at most {MAX_NAMESPACE_LEN} characters of \
                         letters, digits and -_.:/"
                    ),
                    None,
                ));
            }
            controls.namespace = value.to_string();
        }
        Ok(controls)
    }

    /// The threshold in force: the configured one, raised (never lowered) by the header.
    pub fn effective_threshold(&self, configured: f32) -> f32 {
        self.threshold.map_or(configured, |t| t.max(configured))
    }
}

/// The partition of a request: in managed mode the key's tenant (keys configured with the same
/// tenant share entries) and its namespace, which the header can only narrow; otherwise
/// `partition`.
pub fn partition_for(
    headers: &HeaderMap,
    shared: bool,
    namespace: &str,
    key: Option<&KeyConfig>,
) -> Partition {
    let Some(key) = key else {
        return partition(headers, shared, namespace);
    };
    let tenant = if shared {
        "shared".to_string()
    } else {
        format!("key:{}", key.tenant())
    };
    let namespace = match (key.namespace.as_deref().unwrap_or(""), namespace) {
        ("", header) => header.to_string(),
        // `|` cannot occur in a namespace header, so no header reaches another key namespace.
        (own, header) => format!("{own}|{header}"),
    };
    Partition { tenant, namespace }
}

/// Whose entries a request may read and write. By default a hash of the caller's credentials
/// (and organization/project), so two API keys never share; `shared` puts everyone together.
pub fn partition(headers: &HeaderMap, shared: bool, namespace: &str) -> Partition {
    let tenant = if shared {
        "shared".to_string()
    } else {
        let mut hasher = blake3::Hasher::new();
        hasher.update(b"deja-tenant-v1\0");
        for name in TENANT_HEADERS {
            for value in headers.get_all(HeaderName::from_static(name)) {
                hasher.update(name.as_bytes());
                hasher.update(b"\0");
                hasher.update(value.as_bytes());
                hasher.update(b"\0");
            }
        }
        hasher.finalize().to_hex()[..32].to_string()
    };
    Partition {
        tenant,
        namespace: namespace.to_string(),
    }
}

fn header_text(headers: &HeaderMap, name: HeaderName) -> Result<Option<&str>, ApiError> {
    match headers.get(&name) {
        None => Ok(None),
        Some(value) => value
            .to_str()
            .map(|v| Some(v.trim()))
            .map_err(|_| ApiError::invalid(format!("{name} is not ASCII"), None)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    fn one(name: HeaderName, value: &'static str) -> HeaderMap {
        let mut map = HeaderMap::new();
        map.insert(name, HeaderValue::from_static(value));
        map
    }

    #[test]
    fn parses_cache_control() {
        let c =
            Controls::from_headers(&headers(&[("cache-control", "No-Cache, max-age=30")])).unwrap();
        assert!(c.no_cache && !c.no_store);
        assert_eq!(c.max_age_secs, Some(30));
        let c = Controls::from_headers(&headers(&[("cache-control", "no-store")])).unwrap();
        assert!(c.no_store && !c.no_cache);
        assert!(Controls::from_headers(&headers(&[("cache-control", "max-age=soon")])).is_err());
    }

    #[test]
    fn threshold_header_only_raises() {
        let c = Controls::from_headers(&one(THRESHOLD_HEADER, "0.99")).unwrap();
        assert_eq!(c.effective_threshold(0.95), 0.99);
        let c = Controls::from_headers(&one(THRESHOLD_HEADER, "0.5")).unwrap();
        assert_eq!(c.effective_threshold(0.95), 0.95);
        for bad in ["0", "1.5", "-1", "abc", "NaN"] {
            let mut map = HeaderMap::new();
            map.insert(THRESHOLD_HEADER, HeaderValue::from_str(bad).unwrap());
            assert!(Controls::from_headers(&map).is_err(), "{bad}");
        }
    }

    #[test]
    fn namespace_is_validated() {
        let c = Controls::from_headers(&one(NAMESPACE_HEADER, "team-a/prod")).unwrap();
        assert_eq!(c.namespace, "team-a/prod");
        assert!(Controls::from_headers(&one(NAMESPACE_HEADER, "a b")).is_err());
    }

    #[test]
    fn tenants_differ_by_key_unless_shared() {
        let a = headers(&[("authorization", "Bearer sk-a")]);
        let b = headers(&[("authorization", "Bearer sk-b")]);
        let a_org = headers(&[
            ("authorization", "Bearer sk-a"),
            ("openai-organization", "o"),
        ]);
        assert_ne!(
            partition(&a, false, "").tenant,
            partition(&b, false, "").tenant
        );
        assert_ne!(
            partition(&a, false, "").tenant,
            partition(&a_org, false, "").tenant
        );
        assert_eq!(
            partition(&a, false, "").tenant,
            partition(&a, false, "").tenant
        );
        assert_eq!(
            partition(&a, true, "").tenant,
            partition(&b, true, "").tenant
        );
        assert!(!partition(&a, false, "").tenant.contains("sk-a"));
    }
}
