//! A miss: the request goes upstream, the answer is relayed to the client as it arrives
//! (streams chunk by chunk) while it is captured, and a complete answer is stored before the
//! client sees its end.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use http::Response;
use http::header::{self, HeaderValue};
use serde_json::Value;
use tokio::sync::mpsc;

use super::{Call, Lookup, header_num, ms};
use crate::body::{BoxError, ProxyBody, full, streaming};
use crate::cache::entry::Owner;
use crate::cache::store::StoreError;
use crate::cache::{Cache, NewEntry};
use crate::coalesce::{Leader, Shared};
use crate::error::ApiError;
use crate::relay::{response_headers, stream_response};
use crate::routing;
use crate::sse::SseParser;
use crate::upstream::{Failed, cacheable_status};
use crate::usage::Outcome;

impl Call {
    pub(super) async fn miss(
        self,
        lookup: Lookup,
        mut store: Store,
        near: Near,
    ) -> Response<ProxyBody> {
        self.tracker.outcome(Outcome::Miss);
        let sent = match self.send_upstream().await {
            Ok(sent) => sent,
            Err(Failed { error: err, .. }) => {
                tracing::warn!(endpoint = self.endpoint.name(), code = err.code(), error = %err, "upstream failed");
                return err.into_response();
            }
        };
        if sent.fallback {
            // Another model's answer must not be served for this one: not stored, not shared
            // (dropping the leader sends waiting twins upstream themselves).
            store.cache = None;
            store.leader = None;
        }
        let fallback = routing::fallback_headers(&sent);
        let upstream = sent.response;
        let status = upstream.status();
        let mut headers = response_headers(upstream.headers(), Some("miss"));
        headers.extend(fallback);
        if let Some(best) = near.best {
            headers.insert("x-deja-best-similarity", header_num(best));
        }
        if near.rejected > 0 {
            headers.insert("x-deja-verify-rejected", HeaderValue::from(near.rejected));
        }
        tracing::info!(
            endpoint = self.endpoint.name(),
            model = %lookup.model,
            cache = "miss",
            status = status.as_u16(),
            best_similarity = near.best,
            verify_rejected = near.rejected,
            elapsed_ms = ms(self.started),
            "request"
        );
        let is_sse = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        if !cacheable_status(status) || (lookup.stream && !is_sse) {
            // Errors and surprises are relayed as they are and never stored.
            let mut response = stream_response(upstream, None);
            *response.headers_mut() = headers;
            return response;
        }
        if is_sse {
            return self.stream_miss(upstream, headers, store);
        }
        match upstream.bytes().await {
            Ok(bytes) => {
                let stored = serde_json::from_slice::<Value>(&bytes)
                    .ok()
                    .filter(|v| v.is_object() && !crate::chunks::carries_error(v));
                if let Some(answer) = &stored {
                    self.tracker.update(|r| r.take_usage(answer));
                }
                store.finish(stored).await;
                let mut response = Response::new(full(bytes));
                *response.status_mut() = status;
                headers.remove(header::CONTENT_LENGTH);
                *response.headers_mut() = headers;
                response
            }
            Err(err) => {
                ApiError::UpstreamUnreachable(format!("reading the response failed: {err}"))
                    .into_response()
            }
        }
    }

    /// Relays an SSE response chunk by chunk while assembling it; the answer is stored only if
    /// the stream ends cleanly. The chunk carrying the final event is held back until the
    /// answer is stored, so a client that saw the whole answer finds it cached (earlier
    /// chunks, and so the time to first token, are not delayed). A spawned pump keeps reading
    /// if the client leaves while other requests wait on this answer.
    fn stream_miss(
        self,
        upstream: reqwest::Response,
        mut headers: http::HeaderMap,
        store: Store,
    ) -> Response<ProxyBody> {
        let (tx, rx) = mpsc::channel::<Result<Bytes, BoxError>>(32);
        let endpoint = self.endpoint;
        let status = upstream.status();
        let tracker = self.tracker.clone();
        tokio::spawn(async move {
            let mut parser = SseParser::new();
            let mut assembler = endpoint.assembler();
            let mut body = upstream.bytes_stream();
            let mut client_gone = false;
            let mut clean = true;
            let mut held = Vec::new();
            while let Some(chunk) = body.next().await {
                match chunk {
                    Ok(bytes) => {
                        for event in parser.push(&bytes) {
                            assembler.push(&event.data);
                        }
                        if assembler.ended() {
                            held.push(bytes);
                        } else if !client_gone && tx.send(Ok(bytes)).await.is_err() {
                            client_gone = true;
                        }
                        if client_gone && store.followers() == 0 {
                            clean = false;
                            break;
                        }
                    }
                    Err(err) => {
                        clean = false;
                        let _ = tx.send(Err(Box::new(err))).await;
                        break;
                    }
                }
            }
            let answer = if clean && !parser.has_partial() {
                assembler.finish()
            } else {
                None
            };
            match &answer {
                Some(answer) => tracker.update(|r| r.take_usage(answer)),
                None => tracing::info!(endpoint = endpoint.name(), "stream incomplete; not stored"),
            }
            store.finish(answer).await;
            for bytes in held {
                if tx.send(Ok(bytes)).await.is_err() {
                    break;
                }
            }
        });
        headers.remove(header::CONTENT_LENGTH);
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        let mut response = Response::new(streaming(stream));
        *response.status_mut() = status;
        *response.headers_mut() = headers;
        response
    }
}

/// What the semantic search saw on a miss, reported to the caller for threshold tuning.
pub(super) struct Near {
    pub(super) best: Option<f32>,
    pub(super) rejected: usize,
}

/// What to do with an upstream answer once it is complete.
pub(super) struct Store {
    /// `None` under `Cache-Control: no-store`.
    pub(super) cache: Option<Arc<Cache>>,
    pub(super) lookup: Lookup,
    pub(super) vector: Option<Vec<f32>>,
    pub(super) ttl_ms: Option<u64>,
    pub(super) leader: Option<Leader>,
    pub(super) owner: Owner,
}

impl Store {
    fn followers(&self) -> usize {
        self.leader.as_ref().map_or(0, Leader::followers)
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
            response: crate::json_splice::with_keys_first(&answer, &["id", "usage"]),
            has_usage,
            stored: None,
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
            ttl_ms: self.ttl_ms,
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
            Ok(Err(err)) => tracing::warn!(error = %err, "cache store failed; answer not cached"),
            Err(err) => tracing::warn!(error = %err, "cache store task failed"),
        }
        if let Some(leader) = self.leader {
            leader.publish(Some(Arc::new(shared)));
        }
    }
}
