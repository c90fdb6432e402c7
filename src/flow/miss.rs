//! Acting on a miss: the request goes upstream, the answer is relayed to the client as it
//! arrives (streams chunk by chunk) while it is captured, and a complete answer is stored
//! before the client sees its end. A bypass goes upstream too, relayed untouched.

use std::sync::Arc;

use futures_util::StreamExt;
use http::Response;
use http::header;
use serde_json::Value;

use super::Lookup;
use super::client_feed::ClientFeed;
use super::context::Context;
use super::decide::Near;
use super::driven::PumpSlot;
use super::report::Report;
use crate::cache::inflight::{Leader, Matched, Shared};
use crate::cache::store::StoreError;
use crate::cache::{Cache, NewEntry, Partition};
use crate::error::ApiError;
use crate::flow::models;
use crate::track::metering::{UsageStripper, metered};
use crate::upstream::{Failed, cacheable_status, response_headers, stream_response};
use crate::wire::body::{ProxyBody, full, streaming};
use crate::wire::sse::SseParser;

/// Relays a request the cache is not consulted for, untouched.
pub(super) async fn bypass(ctx: Context, reason: &'static str) -> Response<ProxyBody> {
    let report = Report::Bypass { reason };
    report.record(&ctx);
    match ctx.send_upstream().await {
        Ok(sent) => {
            let fallback = models::fallback_headers(&sent);
            let status = sent.response.status().as_u16();
            let response = stream_response(sent.response, None);
            let mut response = metered(response, &ctx.tracker, ctx.strip_usage);
            response.headers_mut().extend(fallback);
            report.respond(&ctx, response.headers_mut(), Some(status));
            response
        }
        Err(failed) => failed.error.into_response(),
    }
}

/// Forwards a miss upstream and relays the answer, storing it when it is complete.
pub(super) async fn forward(
    ctx: Context,
    lookup: &Lookup,
    mut store: Store,
    near: Near,
) -> Response<ProxyBody> {
    let report = Report::Miss {
        model: &lookup.model,
        near: &near,
    };
    report.record(&ctx);
    let sent = match ctx.send_upstream().await {
        Ok(sent) => sent,
        Err(Failed { error: err, .. }) => {
            tracing::warn!(endpoint = ctx.endpoint.name().as_str(), code = err.code(), error = %err, "upstream failed");
            return err.into_response();
        }
    };
    if sent.fallback {
        // Another model's answer must not be served for this one: not stored, not shared
        // (dropping the leader sends waiting twins upstream themselves).
        store.cache = None;
        store.leader = None;
    }
    let fallback = models::fallback_headers(&sent);
    let upstream = sent.response;
    let status = upstream.status();
    let mut headers = response_headers(upstream.headers(), None);
    headers.extend(fallback);
    report.respond(&ctx, &mut headers, Some(status.as_u16()));
    let is_sse = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    if !cacheable_status(status) || (lookup.stream && !is_sse) {
        // Errors and surprises are relayed as they are and never stored.
        let mut response = stream_response(upstream, None);
        *response.headers_mut() = headers;
        return metered(response, &ctx.tracker, ctx.strip_usage);
    }
    if is_sse {
        return stream(&ctx, upstream, headers, store);
    }
    match upstream.bytes().await {
        Ok(bytes) => {
            let stored = serde_json::from_slice::<Value>(&bytes)
                .ok()
                .filter(|v| v.is_object() && !crate::replay::chunks::carries_error(v));
            if let Some(answer) = &stored {
                ctx.tracker.update(|r| r.take_usage(answer));
            }
            store.finish(stored).await;
            let mut response = Response::new(full(bytes));
            *response.status_mut() = status;
            headers.remove(header::CONTENT_LENGTH);
            *response.headers_mut() = headers;
            response
        }
        Err(err) => ApiError::UpstreamUnreachable(format!("reading the response failed: {err}"))
            .into_response(),
    }
}

/// Relays an SSE response chunk by chunk while assembling it; the answer is stored only if
/// the stream ends cleanly. The chunk carrying the final event is held back until the
/// answer is stored, so a client that saw the whole answer finds it cached (earlier
/// chunks, and so the time to first token, are not delayed). The pump runs inside the
/// client's body (`driven`) and moves to a task of its own when a twin starts waiting or
/// the client leaves: it keeps reading if the client leaves while other requests wait on
/// this answer, and while they wait it reads ahead of a client that reads slowly
/// (`ClientFeed`), so they depend on the upstream's pace alone; with no one waiting, the
/// client's pace holds the upstream back, as in a plain relay.
fn stream(
    ctx: &Context,
    upstream: reqwest::Response,
    mut headers: http::HeaderMap,
    store: Store,
) -> Response<ProxyBody> {
    let (mut feed, client_body) = ClientFeed::new();
    let endpoint = ctx.endpoint;
    let status = upstream.status();
    let tracker = ctx.tracker.clone();
    // The usage chunk deja asked for on the key's behalf is stored, not shown.
    let mut stripper = ctx.strip_usage.then(UsageStripper::default);
    // The client's body drives the pump until a twin waits on it (or the client leaves).
    let slot = PumpSlot::new();
    if let Some(leader) = &store.leader {
        let detach = slot.detacher();
        leader.when_followed(move || detach.now());
        if leader.followers() > 0 {
            slot.detach(); // joined while the request was upstream
        }
    }
    let pump = async move {
        let mut parser = SseParser::new();
        let mut assembler = endpoint.assembler();
        let mut body = upstream.bytes_stream();
        let mut clean = true;
        let mut held = Vec::new();
        loop {
            // One branch is always enabled: not reading means the client is behind.
            let read = !feed.is_behind() || store.followers() > 0;
            tokio::select! {
                chunk = body.next(), if read => match chunk {
                    None => break,
                    Some(Ok(bytes)) => {
                        for event in parser.push(&bytes) {
                            assembler.push(&event.data);
                        }
                        let bytes = match &mut stripper {
                            Some(stripper) => stripper.push(&bytes),
                            None => bytes,
                        };
                        // Empty while the stripper holds an unfinished event.
                        if !bytes.is_empty() {
                            if assembler.ended() {
                                held.push(bytes);
                            } else {
                                feed.push(Ok(bytes));
                            }
                        }
                        if feed.is_gone() && store.followers() == 0 {
                            clean = false;
                            break;
                        }
                    }
                    Some(Err(err)) => {
                        clean = false;
                        feed.push(Err(Box::new(err)));
                        break;
                    }
                },
                () = feed.flush_one(), if feed.is_behind() => {}
                // A twin that starts waiting makes it worth reading ahead again.
                () = store.follower_joined(), if !read => {}
            }
        }
        drop(body); // the upstream connection is not needed while the client catches up
        let answer = if clean && !parser.has_partial() {
            assembler.finish()
        } else {
            None
        };
        match &answer {
            Some(answer) => tracker.update(|r| r.take_usage(answer)),
            None => tracing::info!(
                endpoint = endpoint.name().as_str(),
                "stream incomplete; not stored"
            ),
        }
        store.finish(answer).await;
        if let Some(rest) = stripper.as_mut().map(UsageStripper::finish)
            && !rest.is_empty()
        {
            held.push(rest);
        }
        for bytes in held {
            feed.push(Ok(bytes));
        }
        feed.drain().await;
    };
    let client_body = slot.drive(pump, Box::pin(client_body));
    headers.remove(header::CONTENT_LENGTH);
    let mut response = Response::new(streaming(client_body));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

/// Stores an answer that reached deja another way than a relayed miss (a line of a batch's
/// output file) exactly as a miss stores it; an error body is not stored.
pub(crate) async fn store_answer(
    cache: Arc<Cache>,
    lookup: Lookup,
    vector: Option<Vec<f32>>,
    owner: Partition,
    answer: Value,
) {
    if !answer.is_object() || crate::replay::chunks::carries_error(&answer) {
        return;
    }
    let store = Store {
        cache: Some(cache),
        lookup,
        vector,
        leader: None,
        owner,
    };
    store.finish(Some(answer)).await;
}

/// What to do with an upstream answer once it is complete.
pub(super) struct Store {
    /// `None` under `Cache-Control: no-store`.
    pub(super) cache: Option<Arc<Cache>>,
    pub(super) lookup: Lookup,
    pub(super) vector: Option<Vec<f32>>,
    pub(super) leader: Option<Leader>,
    pub(super) owner: Partition,
}

impl Store {
    /// Where this request's answer goes: the cache (unless `no-store`) under the request's
    /// partition, and the twins it leads.
    pub(super) fn new(
        ctx: &Context,
        cache: Arc<Cache>,
        lookup: &Lookup,
        vector: Option<Vec<f32>>,
        leader: Option<Leader>,
    ) -> Store {
        Store {
            cache: (!ctx.controls.no_store).then_some(cache),
            lookup: lookup.clone(),
            vector,
            leader,
            owner: ctx.partition.clone(),
        }
    }

    fn followers(&self) -> usize {
        self.leader.as_ref().map_or(0, Leader::followers)
    }

    async fn follower_joined(&self) {
        match &self.leader {
            Some(leader) => leader.follower_joined().await,
            None => std::future::pending().await,
        }
    }

    /// Stores a complete answer (on the blocking pool), then shares it with waiting twins.
    /// Callers await this before the client sees the end of the answer, so a repeat sent
    /// after it always finds the entry.
    async fn finish(self, answer: Option<Value>) {
        let Some(answer) = answer else {
            return; // dropping the leader releases followers to go upstream themselves
        };
        let has_usage = answer.get("usage").is_some_and(|u| !u.is_null());
        let mut shared = Shared {
            // `id` and `usage` first: a hit then reads both without scanning the content.
            response: crate::replay::json_splice::with_keys_first(&answer, &["id", "usage"]),
            has_usage,
            stored: None,
            matched: Matched::Upstream,
        };
        let Some(cache) = self.cache else {
            if let Some(leader) = self.leader {
                leader.publish(Some(Arc::new(shared)));
            }
            return;
        };
        let new = NewEntry {
            scope: self.lookup.scope,
            exact: self.lookup.exact,
            model: self.lookup.model,
            response: shared.response.clone(),
            has_usage,
            vector: self.vector,
            prompt: self.lookup.semantic_text,
            owner: self.owner,
        };
        match tokio::task::spawn_blocking(move || cache.insert(new)).await {
            Ok(Ok(stored)) => {
                tracing::debug!(entry = stored.0, "stored");
                shared.stored = Some(stored);
            }
            // Disk trouble is warned about once, by the cache itself.
            Ok(Err(StoreError::WritesOff)) => {
                tracing::debug!("cache writes off; answer not cached")
            }
            Ok(Err(StoreError::Oversized)) => {
                tracing::debug!("answer larger than cache.max_bytes; not cached")
            }
            Ok(Err(err)) => tracing::warn!(error = %err, "cache store failed; answer not cached"),
            Err(err) => tracing::warn!(error = %err, "cache store task failed"),
        }
        if let Some(leader) = self.leader {
            leader.publish(Some(Arc::new(shared)));
        }
    }
}
