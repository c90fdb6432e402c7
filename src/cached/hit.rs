//! Answering from the cache: exact lookups, rendering a stored answer (JSON or SSE) with the
//! hit headers, and handing it to requests that waited on this one.

use std::sync::Arc;

use http::header::{self, HeaderName, HeaderValue};
use http::{Response, StatusCode};
use serde_json::Value;

use super::{Call, Lookup, header_num, ms};
use crate::body::{BoxError, ProxyBody, full, streaming};
use crate::cache::{Cache, Hit, Requirements};
use crate::coalesce::{Leader, Matched, Shared};
use crate::json_splice;
use crate::relay::CACHE_STATUS;
use crate::usage::Outcome;

// Names parsed once, not on every hit.
const MATCH: HeaderName = HeaderName::from_static("x-deja-match");
const SIMILARITY: HeaderName = HeaderName::from_static("x-deja-similarity");
const ENTRY: HeaderName = HeaderName::from_static("x-deja-entry");

impl Call {
    /// Answers from the exact tier if a usable entry is there, handing it to waiting twins.
    pub(super) async fn exact_hit(
        &self,
        cache: &Arc<Cache>,
        lookup: &Lookup,
        needs: Requirements,
        leader: &mut Option<Leader>,
    ) -> Option<Response<ProxyBody>> {
        // Inline, not on the blocking pool: an exact lookup is one sled read of a hot page
        // (microseconds), while the hand-off to a blocking thread and back cost more CPU than
        // the whole rest of a hit (benches/proxy_load.rs: context switches per request).
        let started = std::time::Instant::now();
        let found = cache.lookup_exact(&lookup.exact, needs);
        let lookup_ms = ms(started);
        self.tracker
            .update(|r| r.lookup_ms = Some(r.lookup_ms.unwrap_or(0.0) + lookup_ms));
        let hit = match found {
            Ok(hit) => hit?,
            Err(err) => {
                tracing::warn!(error = %err, "cache lookup failed; serving as a miss");
                return None;
            }
        };
        let response = self.hit(lookup, &hit, cache)?;
        share(leader.take(), &hit);
        Some(response)
    }

    /// Renders a stored answer; `None` if it cannot be (then the request proceeds as a miss).
    pub(super) fn hit(
        &self,
        lookup: &Lookup,
        hit: &Hit,
        cache: &Cache,
    ) -> Option<Response<ProxyBody>> {
        let mut response = self.render(lookup, &hit.entry.response)?;
        self.tracker.update(|r| {
            r.cache = if hit.semantic {
                Outcome::HitSemantic
            } else {
                Outcome::HitExact
            };
            r.similarity = Some(hit.similarity);
        });
        let age = hit.entry.age_secs(cache.now_ms());
        let headers = response.headers_mut();
        headers.insert(CACHE_STATUS, HeaderValue::from_static("hit"));
        headers.insert(
            MATCH,
            HeaderValue::from_static(if hit.semantic { "semantic" } else { "exact" }),
        );
        headers.insert(SIMILARITY, header_num(hit.similarity));
        headers.insert(ENTRY, HeaderValue::from(hit.id));
        headers.insert(header::AGE, HeaderValue::from(age));
        tracing::info!(
            endpoint = self.endpoint.name(),
            model = %lookup.model,
            cache = "hit",
            semantic = hit.semantic,
            similarity = hit.similarity,
            entry = hit.id,
            elapsed_ms = ms(self.started),
            "request"
        );
        Some(response)
    }

    /// Renders the answer of the identical request this one waited on. The headers say how
    /// that request found it: fresh from upstream (`coalesced`), or a stored entry (`exact`,
    /// or `semantic` with the entry's real similarity).
    pub(super) fn coalesced(
        &self,
        lookup: &Lookup,
        shared: &Shared,
        cache: &Cache,
    ) -> Option<Response<ProxyBody>> {
        let mut response = self.render(lookup, &shared.response)?;
        let (outcome, label, similarity) = match shared.matched {
            Matched::Upstream => (Outcome::Coalesced, "coalesced", 1.0),
            Matched::Exact => (Outcome::HitExact, "exact", 1.0),
            Matched::Semantic { similarity } => (Outcome::HitSemantic, "semantic", similarity),
        };
        self.tracker.update(|r| {
            r.cache = outcome;
            r.similarity = Some(similarity);
        });
        let headers = response.headers_mut();
        headers.insert(CACHE_STATUS, HeaderValue::from_static("hit"));
        headers.insert(MATCH, HeaderValue::from_static(label));
        headers.insert(SIMILARITY, header_num(similarity));
        let age_ms = shared.stored.map_or(0, |(id, created_ms)| {
            headers.insert(ENTRY, HeaderValue::from(id));
            cache.now_ms().saturating_sub(created_ms)
        });
        headers.insert(header::AGE, HeaderValue::from(age_ms / 1000));
        tracing::info!(
            endpoint = self.endpoint.name(),
            model = %lookup.model,
            cache = "hit",
            matched = label,
            similarity,
            coalesced = true,
            elapsed_ms = ms(self.started),
            "request"
        );
        Some(response)
    }

    /// A stored answer as this request wants it (JSON or SSE), its usage noted in the record;
    /// `None` if the stored text cannot be read. A JSON answer only needs a fresh id spliced
    /// in; everything else is rendered from the parsed answer.
    fn render(&self, lookup: &Lookup, text: &str) -> Option<Response<ProxyBody>> {
        if !lookup.stream
            && let Some(body) = self.endpoint.render_json_text(text)
        {
            let usage = json_splice::top_level_value(text, "usage")
                .and_then(|range| serde_json::from_str::<Value>(&text[range]).ok());
            if let Some(usage) = usage {
                self.tracker.update(|r| r.take_usage_value(&usage));
            }
            return Some(self.respond(lookup, full(body)));
        }
        // Shared with the other replays of a long answer that are running (`lazy_replay`).
        let stored = crate::lazy_replay::parse_shared(text)?;
        self.tracker.update(|r| r.take_usage(&stored));
        Some(self.render_value(lookup, stored))
    }

    fn render_value(&self, lookup: &Lookup, stored: Arc<Value>) -> Response<ProxyBody> {
        let body = if lookup.stream {
            // Lazy: each event is rendered when hyper polls for it, i.e. as the client reads.
            let events = self
                .endpoint
                .render_stream(stored, lookup.include_usage)
                .map(Ok::<_, BoxError>);
            streaming(futures_util::stream::iter(events))
        } else {
            full(self.endpoint.render_json(&stored))
        };
        self.respond(lookup, body)
    }

    fn respond(&self, lookup: &Lookup, body: ProxyBody) -> Response<ProxyBody> {
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
}

/// Hands a hit to the requests waiting on this one.
pub(super) fn share(leader: Option<Leader>, hit: &Hit) {
    if let Some(leader) = leader {
        leader.publish(Some(Arc::new(Shared {
            response: hit.entry.response.clone(),
            has_usage: hit.entry.has_usage,
            stored: Some((hit.id, hit.entry.created_ms)),
            matched: if hit.semantic {
                Matched::Semantic {
                    similarity: hit.similarity,
                }
            } else {
                Matched::Exact
            },
        })));
    }
}
