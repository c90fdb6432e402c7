//! The request flow of a cached endpoint, in four steps that `handle` shows in order:
//!
//! - **plan** (`read`, `plan`): read the body and controls, resolve the model's alias, and
//!   let the endpoint turn the body into a `Lookup` (or a bypass);
//! - **decide** (`decide`): exact tier, in-flight twin, semantic tier → a `Decision` value;
//! - **act** (`hit`, `miss`): render the hit, or forward the miss (relay while capturing,
//!   store a complete answer), or relay a bypass untouched;
//! - **report** (`report`): the usage record, the `x-deja-*` headers and the log line.
//!
//! Any cache trouble (store error, embedding failure) is logged and the request carries on as
//! a miss. Endpoint specifics (which fields form the scope, how streams are assembled and
//! replayed) sit behind the `Endpoint` trait.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Incoming;
use serde_json::Value;

use crate::app::{App, Snapshot};
use crate::cache::Partition;
use crate::error::ApiError;
use crate::observe::usage::{Outcome, SemanticTrace};
use crate::track::Tracker;
use crate::wire::body::ProxyBody;

mod client_feed;
mod context;
pub mod control;
mod decide;
mod driven;
mod hit;
mod last_message;
mod miss;
pub mod models;
mod plan;
mod read;
mod report;

pub use last_message::beyond_text;

pub use crate::app::plans::{Planned, Routed};

pub(crate) use decide::{Ask, Decided, Decision, Vectors, blocking, decide};
pub(crate) use miss::store_answer;
pub(crate) use plan::{Planning, plan_request, route_fresh};
pub(crate) use read::{read_checked, read_request, read_routed};

use context::{Context, Edge};
use decide::Near;
use miss::Store;

/// Why a request skipped the semantic tier: its prompt has more tokens than the embedding
/// model's window (`x-deja-semantic-skipped`, `deja_semantic_skipped_total{reason}`).
pub const SKIPPED_TOO_LONG: &str = "too-long";

// A cacheable request as the flow plans it (kept in `cache`, which trust also reads).
use crate::cache::Lookup;

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
    /// Name used in logs, metrics and the usage log, e.g. `chat.completions`.
    fn name(&self) -> crate::wire::endpoint::EndpointName;
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
    /// The stored answer as SSE events.
    /// The stored answer as SSE events, rendered one by one as the client reads them.
    fn render_stream(
        &self,
        stored: Arc<Value>,
        include_usage: bool,
    ) -> crate::replay::lazy_replay::Replay;
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

/// One request to a cached endpoint, top to bottom: plan → decide → act → report.
pub async fn handle(
    app: Arc<App>,
    snapshot: Snapshot,
    endpoint: &'static dyn Endpoint,
    request: Request<Incoming>,
    suffix: String,
    tracker: &Tracker,
) -> Result<Response<ProxyBody>, ApiError> {
    let started = Instant::now();
    let (parts, body) = request.into_parts();
    let config = &snapshot.config;

    // Plan.
    let (raw, controls) = match read::read_checked(body, &parts.headers, &config.server).await {
        Ok(read) => read,
        Err(err) => return Err(unreadable(err, tracker)),
    };
    let partition = control::partition_for(
        &parts.headers,
        config.cache.shared,
        &controls.namespace,
        tracker.key(),
    );
    let cache = app.cache.clone();
    let planning = match &cache {
        Some(_) => plan_request(&app, &snapshot, endpoint, &partition, raw),
        None => plan::route_fresh(&snapshot.config, &raw, true)
            .map(|(routed, _)| Planning::Bypass(routed, "cache_off")),
    };
    let planning = match planning {
        Ok(planning) => planning,
        Err(err) => return Err(unreadable(err, tracker)),
    };
    let edge = Edge {
        app,
        endpoint,
        parts,
        suffix,
        started,
        tracker: tracker.clone(),
        partition,
        controls,
    };
    let ctx = Context::new(edge, planning.routed());

    // Decide.
    let (decided, cached) = match (cache, planning) {
        (Some(cache), Planning::Cache(planned)) => {
            if ctx.controls.no_cache {
                // Feedback: a no-cache re-ask soon after a hit says it was wrong (crate::trust).
                ctx.app.trust.no_cache(&ctx.config, &planned.lookup);
            }
            let decided = decide(ctx.ask(&cache, &planned.lookup)).await;
            if let Some(outcome) = &decided.semantic {
                // Feeds the dashboard's threshold replay (src/ops/dashboard/).
                let text = planned.lookup.semantic_text.as_deref();
                let show_prompts = ctx.config.admin.show_prompts;
                let trace =
                    SemanticTrace::of(&ctx.partition.namespace, text, outcome, show_prompts);
                ctx.tracker.update(|r| r.semantic = Some(trace));
            }
            (decided, Some((cache, planned)))
        }
        (_, Planning::Bypass(_, reason)) => (Decided::bypass(reason), None),
        (None, Planning::Cache(_)) => (Decided::bypass("cache_off"), None),
    };
    report::timings(&ctx, &decided);

    // Act, and report from the same value: every outcome is here. Misses are boxed: their
    // futures are large, and a hit should not carry (and copy) them.
    let route = ctx.route.clone();
    let response = match (decided.decision, cached) {
        (Decision::Bypass(reason), _) => Box::pin(miss::bypass(ctx, reason)).await,
        (Decision::Hit { hit, leader, best }, Some((cache, planned))) => {
            match hit::render_hit(&ctx, &planned.lookup, &hit, best) {
                Some(response) => {
                    hit::share(leader, &hit);
                    if hit.semantic {
                        // Shadow verification and feedback, off the response path (crate::trust).
                        (ctx.app.trust).semantic_hit(
                            &ctx.config,
                            &ctx.parts.headers,
                            &ctx.body,
                            &ctx.suffix,
                            &planned.lookup,
                            &hit,
                            &ctx.partition,
                        );
                    }
                    response
                }
                // An entry that cannot be rendered is served as a miss.
                None => {
                    let store = Store::new(&ctx, cache, &planned.lookup, None, leader);
                    Box::pin(miss::forward(ctx, &planned.lookup, store, Near::default())).await
                }
            }
        }
        (Decision::Coalesced(shared), Some((cache, planned))) => {
            match hit::render_shared(&ctx, &planned.lookup, &shared) {
                Some(response) => response,
                None => {
                    let store = Store::new(&ctx, cache, &planned.lookup, None, None);
                    Box::pin(miss::forward(ctx, &planned.lookup, store, Near::default())).await
                }
            }
        }
        (Decision::Miss { near, leader }, Some((cache, planned))) => {
            let store = Store::new(&ctx, cache, &planned.lookup, decided.vector, leader);
            Box::pin(miss::forward(ctx, &planned.lookup, store, near)).await
        }
        // Only a planned request with a cache is decided; anything else was a bypass.
        (_, None) => Box::pin(miss::bypass(ctx, "cache_off")).await,
    };
    Ok(models::label(response, route.as_ref()))
}

/// A request that could not be read or planned is an error outcome.
fn unreadable(err: ApiError, tracker: &Tracker) -> ApiError {
    tracker.outcome(Outcome::Error);
    err
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}
