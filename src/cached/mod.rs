//! The request flow of a cached endpoint:
//! read and validate → exact lookup → join in-flight twin → embed and semantic lookup →
//! forward upstream → relay to the client while capturing → store a complete answer.
//!
//! Any cache trouble (store error, embedding failure) is logged and the request carries on as
//! a miss. Endpoint specifics (which fields form the scope, how streams are assembled and
//! replayed) sit behind the `Endpoint` trait.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde_json::Value;

use crate::app::App;
use crate::body::ProxyBody;
use crate::cache::entry::Owner;
use crate::cache::key::Hash32;
use crate::cache::{Cache, Requirements};
use crate::coalesce::Role;
use crate::config::ServerConfig;
use crate::control::{self, Controls};
use crate::embed::EmbedError;
use crate::error::ApiError;
use crate::metering::metered;
use crate::relay::stream_response;
use crate::routing::{self, Route};
use crate::track::{Tracker, estimate_tokens};
use crate::upstream::{Failed, Outgoing, Sent};
use crate::usage::Outcome;

mod client_feed;
mod hit;
mod last_message;
mod memo;
mod miss;

pub use last_message::beyond_text;

pub use memo::{PlanMemo, Planned, Routed};

use hit::share;
use miss::{Near, Store};

/// Why a request skipped the semantic tier: its prompt has more tokens than the embedding
/// model's window (`x-deja-semantic-skipped`, `deja_semantic_skipped_total{reason}`).
pub const SKIPPED_TOO_LONG: &str = "too-long";

/// Whose cache a request reads: the tenant (from credentials) and an optional namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    pub tenant: String,
    pub namespace: String,
}

#[cfg(test)]
impl Partition {
    /// `tenant`'s partition without a namespace.
    pub(crate) fn of_tenant(tenant: &str) -> Partition {
        Partition {
            tenant: tenant.into(),
            namespace: String::new(),
        }
    }
}

/// A cacheable request, reduced to what the cache needs.
#[derive(Debug, Clone)]
pub struct Lookup {
    pub scope: Hash32,
    pub exact: Hash32,
    /// The last user message's text, for the semantic tier; `None` means exact tier only.
    pub semantic_text: Option<String>,
    pub model: String,
    pub stream: bool,
    pub include_usage: bool,
}

pub enum Plan {
    Cache(Lookup),
    /// Relay untouched, with `x-deja-cache: bypass`; `reason` is logged.
    Bypass {
        reason: &'static str,
        stream: bool,
    },
}

/// What differs between cached endpoints.
pub trait Endpoint: Send + Sync + 'static {
    /// Name used in logs, e.g. `chat.completions`.
    fn name(&self) -> &'static str;
    fn plan(&self, body: Value, partition: &Partition) -> Plan;
    /// Collects a streamed answer into the stored (non-streaming) form.
    fn assembler(&self) -> Box<dyn Assembler>;
    /// The stored answer as a non-streaming response body.
    fn render_json(&self, stored: &Value) -> Bytes;
    /// The same from the stored text, when the endpoint can do it without parsing (only the
    /// id changes); `None` falls back to `render_json`.
    fn render_json_text(&self, _stored: &str) -> Option<Bytes> {
        None
    }
    /// The stored answer as SSE events, rendered one by one as the client reads them.
    fn render_stream(&self, stored: Arc<Value>, include_usage: bool) -> crate::lazy_replay::Replay;
}

/// Reads `body` as the endpoint's request type and plans it; a body of the wrong shape
/// bypasses the cache, so the upstream explains what is wrong with it.
pub fn plan_as<T: serde::de::DeserializeOwned>(body: Value, plan: impl FnOnce(T) -> Plan) -> Plan {
    let stream = body.get("stream").and_then(Value::as_bool).unwrap_or(false);
    match serde_json::from_value::<T>(body) {
        Ok(request) => plan(request),
        Err(_) => Plan::Bypass {
            reason: "unreadable",
            stream,
        },
    }
}

/// `stream` and `stream_options.include_usage` of a request, both false when absent.
pub fn stream_flags(stream: &Option<Value>, stream_options: &Option<Value>) -> (bool, bool) {
    let stream = stream.as_ref().and_then(Value::as_bool).unwrap_or(false);
    let include_usage = stream_options
        .as_ref()
        .and_then(|options| options.get("include_usage"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    (stream, include_usage)
}

pub trait Assembler: Send {
    fn push(&mut self, data: &str);
    /// True once the stream's final event (`[DONE]`, `response.completed`) has been seen.
    fn ended(&self) -> bool;
    fn finish(self: Box<Self>) -> Option<Value>;
}

/// Everything one request carries through the flow.
struct Call {
    app: Arc<App>,
    endpoint: &'static dyn Endpoint,
    parts: http::request::Parts,
    body: Bytes,
    suffix: String,
    started: Instant,
    tracker: Tracker,
    /// Prompt and completion tokens the request may use (for per-key limits).
    estimate: (u64, u64),
    /// The model routing of this request (`None`: the body names no model).
    route: Option<Route>,
    /// deja asked for the stream's usage chunk on the key's behalf; the client does not get it.
    strip_usage: bool,
}

pub async fn handle(
    app: Arc<App>,
    endpoint: &'static dyn Endpoint,
    request: Request<Incoming>,
    suffix: String,
    tracker: &Tracker,
) -> Response<ProxyBody> {
    let (parts, body) = request.into_parts();
    let server = app.config().server.clone();
    let (raw, controls) = match read_checked(body, &parts.headers, &server).await {
        Ok(read) => read,
        Err(err) => return unreadable(err, tracker),
    };
    let partition = control::partition_for(
        &parts.headers,
        app.config().cache.shared,
        &controls.namespace,
        tracker.key(),
    );
    let Some(cache) = app.cache.clone() else {
        return match route_fresh(&app, &raw, &server) {
            Ok((routed, _)) => {
                bypass(&app, endpoint, parts, suffix, tracker, routed, "cache_off").await
            }
            Err(err) => unreadable(err, tracker),
        };
    };
    let planned = match plan_request(&app, endpoint, &partition, raw) {
        Ok(Planning::Cache(planned)) => planned,
        Ok(Planning::Bypass(routed, reason)) => {
            return bypass(&app, endpoint, parts, suffix, tracker, routed, reason).await;
        }
        Err(err) => return unreadable(err, tracker),
    };
    planned.routed.note(tracker);
    let call = Call::new(&app, endpoint, parts, suffix, tracker, &planned.routed);
    let response = call
        .cached(cache, controls, planned.lookup.clone(), partition)
        .await;
    routing::label(response, planned.routed.route.as_ref())
}

/// What planning made of a request.
pub(crate) enum Planning {
    Cache(Arc<Planned>),
    Bypass(Routed, &'static str),
}

/// Plans a request body as the proxy does: the remembered plan of a repeated body, else parse,
/// resolve the model's alias (`route_fresh`) and let the endpoint plan it. `/admin/lookup` runs
/// this too, so it explains the very key a request gets.
pub(crate) fn plan_request(
    app: &App,
    endpoint: &'static dyn Endpoint,
    partition: &Partition,
    raw: Bytes,
) -> Result<Planning, ApiError> {
    if let Some(planned) = app.plans.get(endpoint, partition, &raw) {
        return Ok(Planning::Cache(planned));
    }
    let epoch = app.plans.epoch();
    // Its own allocation: a body read from the socket may share a larger buffer, which the
    // memo would otherwise keep alive.
    let raw = if raw.len() <= memo::MAX_BODY {
        Bytes::copy_from_slice(&raw)
    } else {
        raw
    };
    let (routed, json) = route_fresh(app, &raw, &app.config().server)?;
    match endpoint.plan(json, partition) {
        Plan::Cache(mut lookup) => {
            // Embedding and verifying a long text costs seconds and hundreds of MB.
            let longest = app.config().cache.max_semantic_bytes;
            lookup.semantic_text.take_if(|text| text.len() > longest);
            let planned = Arc::new(Planned { routed, lookup });
            app.plans
                .remember(epoch, endpoint, partition, raw, planned.clone());
            Ok(Planning::Cache(planned))
        }
        Plan::Bypass { reason, .. } => Ok(Planning::Bypass(routed, reason)),
    }
}

fn unreadable(err: ApiError, tracker: &Tracker) -> Response<ProxyBody> {
    tracker.outcome(Outcome::Error);
    err.into_response()
}

async fn bypass(
    app: &Arc<App>,
    endpoint: &'static dyn Endpoint,
    parts: http::request::Parts,
    suffix: String,
    tracker: &Tracker,
    routed: Routed,
    reason: &'static str,
) -> Response<ProxyBody> {
    routed.note(tracker);
    let call = Call::new(app, endpoint, parts, suffix, tracker, &routed);
    routing::label(call.bypass(reason).await, routed.route.as_ref())
}

/// Parses the body and resolves its model's alias: before the cache key is computed, so an
/// alias shares its model's entries.
fn route_fresh(app: &App, raw: &Bytes, server: &ServerConfig) -> Result<(Routed, Value), ApiError> {
    let json = parse_object(raw, server.max_json_values)?;
    let model_asked = json
        .get("model")
        .and_then(Value::as_str)
        .map(str::to_string);
    let (body, json, route) = routing::apply(&app.config().routing, raw.clone(), json, true);
    let estimate = estimate_tokens(&body, Some(&json));
    let routed = Routed {
        body,
        route,
        estimate,
        model_asked,
    };
    Ok((routed, json))
}

/// Reads a request (`read_request`), resolves its model's alias (`routing::apply`; fallbacks
/// only when `fallbacks`) and notes the model asked and the model routed to in the record.
/// An unreadable request is answered at once.
#[allow(clippy::result_large_err)] // the Err is the response itself
pub(crate) async fn read_routed(
    app: &App,
    body: Incoming,
    parts: &http::request::Parts,
    tracker: &Tracker,
    fallbacks: bool,
) -> Result<(Bytes, Value, Controls, Option<routing::Route>), Response<ProxyBody>> {
    let server = app.config().server.clone();
    let (body, json, controls) = match read_request(body, &parts.headers, &server).await {
        Ok(read) => read,
        Err(err) => {
            tracker.outcome(Outcome::Error);
            return Err(err.into_response());
        }
    };
    let model = json
        .get("model")
        .and_then(Value::as_str)
        .map(str::to_string);
    let (body, json, route) = routing::apply(&app.config().routing, body, json, fallbacks);
    tracker.update(|r| {
        r.model_used = route.as_ref().map(|route| route.model().to_string());
        r.model_asked = model;
    });
    Ok((body, json, controls, route))
}

/// Reads a cached endpoint's request: the body (within the size limit and the body timeout),
/// parsed as a JSON object, and the cache controls from its headers.
pub(crate) async fn read_request(
    body: Incoming,
    headers: &http::HeaderMap,
    server: &ServerConfig,
) -> Result<(Bytes, Value, Controls), ApiError> {
    let (body, controls) = read_checked(body, headers, server).await?;
    let json = parse_object(&body, server.max_json_values)?;
    Ok((body, json, controls))
}

/// The body (within the size limit and the body timeout) and the cache controls.
async fn read_checked(
    body: Incoming,
    headers: &http::HeaderMap,
    server: &ServerConfig,
) -> Result<(Bytes, Controls), ApiError> {
    let secs = server.body_timeout_secs;
    // A client dripping its body (slow-loris) would otherwise hold a connection for ever.
    let body = tokio::time::timeout(
        Duration::from_secs(secs),
        read_body(body, server.max_body_bytes),
    )
    .await
    .map_err(|_| ApiError::BodyTimeout { secs })??;
    Ok((body, Controls::from_headers(headers)?))
}

/// The body as a JSON object, if it holds no more than `max_values` items (a tree costs about
/// 60 bytes per item: see `json_budget`).
fn parse_object(body: &[u8], max_values: usize) -> Result<Value, ApiError> {
    if !crate::json_budget::within(body, max_values) {
        return Err(ApiError::invalid(
            format!(
                "the request body holds more than {max_values} JSON values, more than this \
                 proxy parses (server.max_json_values)"
            ),
            None,
        ));
    }
    match serde_json::from_slice(body) {
        Ok(Value::Object(map)) => Ok(Value::Object(map)),
        Ok(_) => Err(ApiError::invalid(
            "the request body must be a JSON object",
            None,
        )),
        Err(err) => Err(ApiError::invalid(
            format!("could not parse the JSON body of your request: {err}"),
            None,
        )),
    }
}

async fn read_body(body: Incoming, limit: usize) -> Result<Bytes, ApiError> {
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) if err.is::<http_body_util::LengthLimitError>() => {
            Err(ApiError::BodyTooLarge { limit })
        }
        Err(err) => Err(ApiError::BodyRead(err.to_string())),
    }
}

impl Call {
    fn new(
        app: &Arc<App>,
        endpoint: &'static dyn Endpoint,
        parts: http::request::Parts,
        suffix: String,
        tracker: &Tracker,
        routed: &Routed,
    ) -> Call {
        let (body, strip_usage) =
            crate::metering::ask_for_usage(endpoint.name(), tracker, routed.body.clone());
        Call {
            app: app.clone(),
            endpoint,
            parts,
            body,
            strip_usage,
            suffix,
            started: Instant::now(),
            tracker: tracker.clone(),
            estimate: routed.estimate,
            route: routed.route.clone(),
        }
    }

    async fn bypass(self, reason: &'static str) -> Response<ProxyBody> {
        self.tracker.update(|r| {
            r.cache = Outcome::Bypass;
            r.bypass_reason = Some(reason);
        });
        tracing::info!(
            endpoint = self.endpoint.name(),
            cache = "bypass",
            reason,
            "request"
        );
        match self.send_upstream().await {
            Ok(sent) => {
                let fallback = routing::fallback_headers(&sent);
                let response = stream_response(sent.response, Some("bypass"));
                let mut response = metered(response, &self.tracker, self.strip_usage);
                response.headers_mut().extend(fallback);
                response
            }
            Err(failed) => failed.error.into_response(),
        }
    }

    /// With retries, and with fallback models when the route has them.
    async fn send_upstream(&self) -> Result<Sent, Failed> {
        self.tracker
            .reserve(self.estimate)
            .map_err(|error| Failed {
                error,
                retries: Vec::new(),
            })?;
        let out = Outgoing {
            method: &self.parts.method,
            suffix: &self.suffix,
            headers: &self.parts.headers,
            parse_body: true,
        };
        let sent = Instant::now();
        let result = routing::send(&self.app, &out, self.body.clone(), self.route.as_ref()).await;
        self.tracker.upstream_call(sent, &result);
        self.tracker.update(|r| {
            if let Ok(Sent {
                model: Some(model), ..
            }) = &result
            {
                r.model_used = Some(model.clone());
            }
        });
        result
    }

    async fn cached(
        self,
        cache: Arc<Cache>,
        controls: Controls,
        lookup: Lookup,
        partition: Partition,
    ) -> Response<ProxyBody> {
        let needs = Requirements {
            max_age_ms: controls.max_age_secs.map(|s| s.saturating_mul(1000)),
            // Non-streaming completions always carry usage; so must a hit.
            needs_usage: !lookup.stream || lookup.include_usage,
        };

        if controls.no_cache {
            self.app.trust.no_cache(&self.app, &lookup); // feedback: a re-ask after a hit
        }
        // Fast path: a stored answer needs no coordination.
        if !controls.no_cache
            && let Some(response) = self.exact_hit(&cache, &lookup, needs, &mut None).await
        {
            return response;
        }
        let configured = self.app.config().cache.threshold_for(&lookup.model);
        // The error budget may have raised it (crate::trust); the header only raises further.
        let configured =
            (self.app.trust).threshold(&self.app, configured, &lookup.model, &partition.namespace);
        let threshold = controls.effective_threshold(configured);
        // Then join the in-flight twin. A leader unregisters only after its answer is stored,
        // so once we lead, a second exact lookup sees every twin that finished meanwhile.
        // A follower takes the twin's answer only if it would have accepted it itself.
        let mut leader = None;
        if !controls.no_cache {
            match self.app.inflight.join(lookup.exact) {
                Role::Leader(l) => leader = Some(l),
                Role::Follower(follower) => {
                    if let Some(shared) = follower.wait().await
                        && shared.satisfies(needs, threshold, cache.now_ms())
                        && let Some(response) = self.coalesced(&lookup, &shared, &cache)
                    {
                        return response;
                    }
                }
            }
            if leader.is_some()
                && let Some(response) = self.exact_hit(&cache, &lookup, needs, &mut leader).await
            {
                return response;
            }
        }

        let mut vector = None;
        let mut best = None;
        let mut rejected = 0;
        let mut skipped = None;
        // The vector serves the lookup and the stored entry; with neither, skip the call.
        let wants_vector = !(controls.no_cache && controls.no_store);
        if let (true, Some(text), Some(embedder)) = (
            self.app.config().cache.semantic && wants_vector,
            &lookup.semantic_text,
            &self.app.embedder,
        ) {
            let embed_started = Instant::now();
            match embedder
                .embed(text, self.parts.headers.get(header::AUTHORIZATION))
                .await
            {
                Ok(v) => vector = Some(v),
                // Expected for long prompts: exact tier only, no lookup and no index entry.
                Err(EmbedError::TooLong) => {
                    skipped = Some(SKIPPED_TOO_LONG);
                    self.tracker.update(|r| r.semantic_skipped = skipped);
                    tracing::debug!("prompt longer than the embedding window; exact tier only");
                }
                Err(err) => tracing::warn!(error = %err, "embedding failed; serving as a miss"),
            }
            let embed_ms = ms(embed_started);
            self.tracker.update(|r| r.embedding_ms = Some(embed_ms));
            tracing::debug!(elapsed_ms = embed_ms, "embedded prompt");
        }
        if let (Some(v), false) = (&vector, controls.no_cache) {
            let (scope, v) = (lookup.scope, v.clone());
            let query = lookup.semantic_text.clone().unwrap_or_default();
            let lookup_started = Instant::now();
            let outcome = blocking(&cache, move |c| {
                c.lookup_semantic(&scope, &v, &query, threshold, needs)
            })
            .await;
            let lookup_ms = ms(lookup_started);
            self.tracker
                .update(|r| r.lookup_ms = Some(r.lookup_ms.unwrap_or(0.0) + lookup_ms));
            if let Some(outcome) = outcome {
                // Feeds the dashboard's threshold replay (src/dashboard/).
                let text = lookup.semantic_text.as_deref();
                self.tracker.update(|r| {
                    r.semantic =
                        crate::dashboard::trace(&self.app, &partition.namespace, text, &outcome)
                });
                best = outcome.best;
                rejected = outcome.rejected;
                self.tracker.update(|r| r.best_similarity = best);
                if let Some(hit) = outcome.hit
                    && let Some(response) = self.hit(&lookup, &hit, &cache)
                {
                    share(leader, &hit);
                    // Shadow verification and feedback, off the response path (crate::trust).
                    (self.app.trust).semantic_hit(
                        &self.app,
                        &self.parts.headers,
                        &self.body,
                        &self.suffix,
                        &lookup,
                        &hit,
                        &partition,
                    );
                    return response;
                }
            }
        }

        let store = Store {
            cache: (!controls.no_store).then_some(cache),
            lookup: lookup.clone(),
            vector,
            leader,
            owner: Owner::of(&partition),
        };
        let near = Near {
            best,
            rejected,
            skipped,
        };
        self.miss(lookup, store, near).await
    }
}

/// Runs cache work on the blocking pool; an error is logged and becomes `None` (a miss).
pub(crate) async fn blocking<T, F>(cache: &Arc<Cache>, work: F) -> Option<T>
where
    T: Send + 'static,
    F: FnOnce(&Cache) -> Result<T, crate::cache::store::StoreError> + Send + 'static,
{
    let cache = cache.clone();
    match tokio::task::spawn_blocking(move || work(&cache)).await {
        Ok(Ok(value)) => Some(value),
        Ok(Err(err)) => {
            tracing::warn!(error = %err, "cache lookup failed; serving as a miss");
            None
        }
        Err(err) => {
            tracing::warn!(error = %err, "cache task failed; serving as a miss");
            None
        }
    }
}

fn header_num(value: f32) -> HeaderValue {
    // Every exact hit says 1.0: skip the float formatting and its allocation.
    if value == 1.0 {
        return HeaderValue::from_static("1.0000");
    }
    HeaderValue::from_str(&format!("{value:.4}")).unwrap_or(HeaderValue::from_static("0"))
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}
