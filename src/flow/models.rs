//! Model routing (`[routing]`): aliases rewrite a request's `model` before its cache key is
//! computed, so an alias and its target share entries; fallbacks name the models to try, in
//! order, when one still fails after its retries. Read from the configuration per request.

use bytes::Bytes;
use http::header::{HeaderMap, HeaderValue};
use http::{Response, StatusCode};
use serde_json::Value;

use crate::app::App;
use crate::config::Config;
use crate::config::Route;
pub use crate::config::RoutingConfig;
use crate::error::ApiError;
use crate::upstream::{Failed, Outgoing, Sent};
use crate::wire::body::ProxyBody;

use crate::wire::headers::{FALLBACK as FALLBACK_HEADER, MODEL as MODEL_HEADER};

/// Resolves the alias in a request's `model`, rewriting the body if it was one. `None` when
/// the body names no model (then nothing is routed).
pub fn apply(
    config: &RoutingConfig,
    body: Bytes,
    mut json: Value,
    fallbacks: bool,
) -> (Bytes, Value, Option<Route>) {
    let Some(requested) = json.get("model").and_then(Value::as_str) else {
        return (body, json, None);
    };
    let route = config.route(requested, fallbacks);
    if route.model() == requested {
        return (body, json, Some(route));
    }
    json["model"] = Value::String(route.model().to_string());
    let body = Bytes::from(json.to_string());
    (body, json, Some(route))
}

/// `body` (a JSON object) with its `model` replaced.
fn with_model(body: &Bytes, model: &str) -> Option<Bytes> {
    let mut json: Value = serde_json::from_slice(body).ok()?;
    json.as_object_mut()?
        .insert("model".into(), Value::String(model.into()));
    Some(Bytes::from(json.to_string()))
}

/// Why the last model's outcome calls for the next one: a 429 or 5xx, or no connection.
fn fallback_cause(outcome: &Result<Sent, Failed>) -> Option<String> {
    match outcome {
        Ok(sent) => {
            let status = sent.response.status();
            (status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error())
                .then(|| status.as_u16().to_string())
        }
        // Not our own timeout: that request may still be running upstream.
        Err(failed) => matches!(failed.error, ApiError::UpstreamUnreachable(_))
            .then(|| failed.error.code().to_string()),
    }
}

/// Sends the request to each model of `route` in turn, each with its retries, until one
/// answers with something other than a 429/5xx or a connection failure; the last model's
/// outcome stands whatever it is. Without a route, the one request with its retries.
pub async fn send(
    app: &App,
    config: &Config,
    out: &Outgoing<'_>,
    body: Bytes,
    route: Option<&Route>,
) -> Result<Sent, Failed> {
    let upstream = &config.upstream;
    let Some(route) = route else {
        return app.upstream.send_retrying(upstream, out, body).await;
    };
    let mut retries = Vec::new();
    let mut current = body.clone();
    let mut index = 0;
    loop {
        let mut outcome = app.upstream.send_retrying(upstream, out, current).await;
        let model = &route.models[index];
        let cause = fallback_cause(&outcome);
        let next = route.models.get(index + 1);
        let next_body = next.and_then(|next| with_model(&body, next));
        match outcome.as_mut() {
            Ok(sent) => retries.append(&mut sent.retries),
            Err(failed) => retries.append(&mut failed.retries),
        }
        if let (Some(cause), Some(next), Some(next_body)) = (cause, next, next_body) {
            tracing::warn!(from = %model, to = %next, cause, "falling back to the next model");
            index += 1;
            current = next_body;
            continue;
        }
        return match outcome {
            Ok(sent) => Ok(Sent {
                retries,
                model: Some(model.clone()),
                fallback: index > 0,
                ..sent
            }),
            Err(failed) => Err(Failed { retries, ..failed }),
        };
    }
}

/// The headers saying a fallback model answered, to add to the relayed answer.
pub fn fallback_headers(sent: &Sent) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if let (true, Some(model)) = (sent.fallback, &sent.model)
        && let Ok(value) = HeaderValue::from_str(model)
    {
        headers.insert(MODEL_HEADER, value.clone());
        headers.insert(FALLBACK_HEADER, value);
    }
    headers
}

/// Names the routed model on a response that does not name one yet (hits, bypasses, errors).
pub fn label(mut response: Response<ProxyBody>, route: Option<&Route>) -> Response<ProxyBody> {
    if let Some(route) = route.filter(|route| route.routed())
        && !response.headers().contains_key(MODEL_HEADER)
        && let Ok(value) = HeaderValue::from_str(route.model())
    {
        response.headers_mut().insert(MODEL_HEADER, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config(aliases: &[(&str, &str)], fallbacks: &[(&str, &[&str])]) -> RoutingConfig {
        RoutingConfig {
            aliases: aliases
                .iter()
                .map(|(a, m)| (a.to_string(), m.to_string()))
                .collect(),
            fallbacks: fallbacks
                .iter()
                .map(|(m, list)| (m.to_string(), list.iter().map(|s| s.to_string()).collect()))
                .collect(),
        }
    }

    #[test]
    fn aliases_resolve_through_chains_and_fallbacks_follow_the_target() {
        let routing = config(
            &[("fast", "mini"), ("mini", "gpt-4o-mini"), ("big", "gpt-4o")],
            &[("gpt-4o", &["fast", "gpt-4o-mini", "gpt-3.5"])],
        );
        routing.validate().unwrap();
        assert_eq!(routing.resolve("fast"), "gpt-4o-mini");
        assert_eq!(routing.resolve("other"), "other");
        let route = routing.route("big", true);
        assert_eq!(route.models, ["gpt-4o", "gpt-4o-mini", "gpt-3.5"]);
        assert!(route.routed());
        assert_eq!(routing.route("big", false).models, ["gpt-4o"]);
        assert!(!routing.route("plain", true).routed());
        assert!(routing.route("fast", false).routed());
    }

    #[test]
    fn apply_rewrites_only_aliases() {
        let routing = config(&[("fast", "gpt-4o-mini")], &[]);
        let json = json!({"model": "fast", "messages": []});
        let (body, json, route) = apply(&routing, Bytes::from(json.to_string()), json, true);
        assert_eq!(json["model"], "gpt-4o-mini");
        let sent: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(sent["model"], "gpt-4o-mini");
        assert_eq!(route.unwrap().requested, "fast");
        let original = Bytes::from_static(br#"{"model":"gpt-4o", "x": 1}"#);
        let (body, _, route) = apply(
            &routing,
            original.clone(),
            serde_json::from_slice(&original).unwrap(),
            true,
        );
        assert_eq!(body, original, "an unrouted body is sent byte for byte");
        assert!(!route.unwrap().routed());
        let (_, _, route) = apply(&routing, Bytes::new(), json!({"input": "x"}), true);
        assert!(route.is_none());
    }

    #[test]
    fn invalid_routes_name_the_key() {
        let cases: [(RoutingConfig, &str); 6] = [
            (
                config(&[("a", "b"), ("b", "a")], &[]),
                "routing.aliases.\"a\"",
            ),
            (config(&[("a", "a")], &[]), "routing.aliases.\"a\""),
            (config(&[("a", "")], &[]), "routing.aliases.\"a\""),
            (
                config(&[("fast", "mini")], &[("fast", &["x"])]),
                "routing.fallbacks.\"fast\"",
            ),
            (config(&[], &[("m", &[])]), "routing.fallbacks.\"m\""),
            (
                config(&[("self", "m")], &[("m", &["self"])]),
                "routing.fallbacks.\"m\"",
            ),
        ];
        for (routing, key) in cases {
            let err = routing.validate().unwrap_err().to_string();
            assert!(err.contains(key), "{err}");
        }
        config(&[("a", "b"), ("b", "c")], &[("c", &["d"])])
            .validate()
            .unwrap();
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's closure signature
    fn routing_and_retry_load_from_file_and_env_and_are_validated() {
        use crate::config::Config;
        use std::path::Path;
        figment::Jail::expect_with(|jail| {
            jail.clear_env(); // a stray DEJA_* variable must not leak in
            jail.create_file(
                "proxy.toml",
                r#"
[upstream.retry]
max_attempts = 5
deadline_secs = 2.5
[routing.aliases]
fast = "gpt-4o-mini"
[routing.fallbacks]
"gpt-4o" = ["gpt-4o-mini", "fast"]
"#,
            )?;
            jail.set_env("DEJA_UPSTREAM__RETRY__INITIAL_BACKOFF_MS", "50");
            let config = Config::load(Path::new("proxy.toml")).expect("loads");
            assert_eq!(config.upstream.retry.max_attempts, 5);
            assert_eq!(config.upstream.retry.initial_backoff_ms, 50);
            assert_eq!(config.upstream.retry.deadline_secs, 2.5);
            assert_eq!(config.routing.resolve("fast"), "gpt-4o-mini");
            assert_eq!(
                config.routing.route("gpt-4o", true).models,
                ["gpt-4o", "gpt-4o-mini"]
            );
            jail.create_file("proxy.toml", "[routing.fallbacks]\n\"gpt-4o\" = []\n")?;
            let err = Config::load(Path::new("proxy.toml"))
                .unwrap_err()
                .to_string();
            assert!(err.contains("routing.fallbacks.\"gpt-4o\""), "{err}");
            jail.create_file("proxy.toml", "[upstream.retry]\nmax_attempts = 0\n")?;
            let err = Config::load(Path::new("proxy.toml"))
                .unwrap_err()
                .to_string();
            assert!(err.contains("upstream.retry.max_attempts"), "{err}");
            jail.create_file("proxy.toml", "[routing]\nalias = {}\n")?;
            assert!(
                Config::load(Path::new("proxy.toml")).is_err(),
                "unknown key"
            );
            Ok(())
        });
    }

    #[test]
    fn with_model_replaces_the_field() {
        let body = Bytes::from_static(br#"{"model":"a","messages":[{"role":"user"}]}"#);
        let out: Value = serde_json::from_slice(&with_model(&body, "b").unwrap()).unwrap();
        assert_eq!(out, json!({"model": "b", "messages": [{"role": "user"}]}));
        assert!(with_model(&Bytes::from_static(b"[1]"), "b").is_none());
    }
}
