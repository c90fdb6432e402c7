//! Acting on a hit: rendering a stored answer (JSON or SSE) as this request wants it, and
//! handing it to requests that waited on this one.

use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use serde_json::Value;

use super::Lookup;
use super::context::Context;
use super::report::Report;
use crate::cache::Hit;
use crate::cache::inflight::{Leader, Matched, Shared};
use crate::replay::json_splice;
use crate::wire::body::{BoxError, ProxyBody, full, streaming};

/// Renders a stored entry and reports the hit; `None` if it cannot be rendered (then the
/// request proceeds as a miss).
pub(super) fn render_hit(
    ctx: &Context,
    lookup: &Lookup,
    hit: &Hit,
    best: Option<f32>,
) -> Option<Response<ProxyBody>> {
    let mut response = render(ctx, lookup, &hit.entry.response)?;
    let report = Report::Hit {
        model: &lookup.model,
        matched: matched(hit),
        entry: Some(hit.id),
        age_secs: hit.entry.age_secs(ctx.app.now_ms()),
        coalesced: false,
        best,
    };
    report.send(ctx, response.headers_mut());
    Some(response)
}

/// Renders the answer of the identical request this one waited on. The report says how that
/// request found it: fresh from upstream (`coalesced`), or a stored entry (`exact`, or
/// `semantic` with the entry's real similarity).
pub(super) fn render_shared(
    ctx: &Context,
    lookup: &Lookup,
    shared: &Shared,
) -> Option<Response<ProxyBody>> {
    let mut response = render(ctx, lookup, &shared.response)?;
    let age_ms = shared.stored.map_or(0, |(_, created_ms)| {
        ctx.app.now_ms().saturating_sub(created_ms)
    });
    let report = Report::Hit {
        model: &lookup.model,
        matched: shared.matched,
        entry: shared.stored.map(|(id, _)| id),
        age_secs: age_ms / 1000,
        coalesced: true,
        best: None,
    };
    report.send(ctx, response.headers_mut());
    Some(response)
}

fn matched(hit: &Hit) -> Matched {
    if hit.semantic {
        Matched::Semantic {
            similarity: hit.similarity,
        }
    } else {
        Matched::Exact
    }
}

/// A stored answer as this request wants it (JSON or SSE), its usage noted in the record;
/// `None` if the stored text cannot be read. A JSON answer only needs a fresh id spliced
/// in; everything else is rendered from the parsed answer.
fn render(ctx: &Context, lookup: &Lookup, text: &str) -> Option<Response<ProxyBody>> {
    if !lookup.stream
        && let Some(body) = ctx.endpoint.render_json_text(text)
    {
        let usage = json_splice::top_level_value(text, "usage")
            .and_then(|range| serde_json::from_str::<Value>(&text[range]).ok());
        if let Some(usage) = usage {
            ctx.tracker.update(|r| r.take_usage_value(&usage));
        }
        return Some(respond(lookup, full(body)));
    }
    // Shared with the other replays of a long answer that are running (`lazy_replay`).
    let stored = crate::replay::lazy_replay::parse_shared(text)?;
    ctx.tracker.update(|r| r.take_usage(&stored));
    let body = if lookup.stream {
        // Lazy: each event is rendered when hyper polls for it, i.e. as the client reads.
        let events = ctx
            .endpoint
            .render_stream(stored, lookup.include_usage)
            .map(Ok::<_, BoxError>);
        streaming(futures_util::stream::iter(events))
    } else {
        full(ctx.endpoint.render_json(&stored))
    };
    Some(respond(lookup, body))
}

fn respond(lookup: &Lookup, body: ProxyBody) -> Response<ProxyBody> {
    let content_type = if lookup.stream {
        "text/event-stream; charset=utf-8"
    } else {
        "application/json"
    };
    let mut response = Response::new(body);
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if lookup.stream {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    }
    response
}

/// Hands a hit to the requests waiting on this one.
pub(super) fn share(leader: Option<Leader>, hit: &Hit) {
    if let Some(leader) = leader {
        leader.publish(Some(Arc::new(Shared {
            response: hit.entry.response.clone(),
            has_usage: hit.entry.has_usage,
            stored: Some((hit.id, hit.entry.created_ms)),
            matched: matched(hit),
        })));
    }
}
