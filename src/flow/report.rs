//! The one place an outcome is reported: the usage record, the `x-deja-*` response headers
//! and the `request` log line are all filled here, from the same value, so they cannot
//! disagree.

use http::header::{self, HeaderMap, HeaderValue};

use super::context::Context;
use super::decide::{Decided, Near};
use crate::cache::inflight::Matched;
use crate::observe::usage::Outcome;
use crate::wire::headers;

/// How a request was answered, as reported.
pub(crate) enum Report<'a> {
    Hit {
        model: &'a str,
        /// How the answer was found (`x-deja-match`, and the similarity).
        matched: Matched,
        /// The entry served, when the answer was stored.
        entry: Option<u64>,
        age_secs: u64,
        /// The answer came from the identical request this one waited on.
        coalesced: bool,
        /// The best semantic candidate seen on the way (the usage record keeps it).
        best: Option<f32>,
    },
    Miss {
        model: &'a str,
        near: &'a Near,
    },
    Bypass {
        reason: &'static str,
    },
}

impl Report<'_> {
    /// Fills the record, adds the headers and logs the line (a hit: nothing goes upstream).
    pub(crate) fn send(&self, ctx: &Context, headers: &mut HeaderMap) {
        self.record(ctx);
        self.respond(ctx, headers, None);
    }

    /// The outcome in the usage record. A request that goes upstream is recorded before it
    /// goes, so a refusal on the way (rate limit, budget) overrides it, and an upstream
    /// failure (answered with the error as it is) keeps it.
    pub(crate) fn record(&self, ctx: &Context) {
        ctx.tracker.update(|r| match *self {
            Report::Hit { matched, best, .. } => {
                r.cache = match matched {
                    Matched::Upstream => Outcome::Coalesced,
                    Matched::Exact => Outcome::HitExact,
                    Matched::Semantic { .. } => Outcome::HitSemantic,
                };
                r.similarity = Some(similarity(matched));
                r.best_similarity = best;
            }
            Report::Miss { near, .. } => {
                r.cache = Outcome::Miss;
                r.best_similarity = near.best;
                r.semantic_skipped = near.skipped;
            }
            Report::Bypass { reason } => {
                r.cache = Outcome::Bypass;
                r.bypass_reason = Some(reason);
            }
        });
    }

    /// The headers of the response, and the log line; `upstream` is the upstream's status.
    pub(crate) fn respond(&self, ctx: &Context, headers: &mut HeaderMap, upstream: Option<u16>) {
        self.headers(headers);
        self.log(ctx, upstream);
    }

    fn headers(&self, headers: &mut HeaderMap) {
        match *self {
            Report::Hit {
                matched,
                entry,
                age_secs,
                ..
            } => {
                headers.insert(headers::CACHE, HeaderValue::from_static("hit"));
                headers.insert(headers::MATCH, HeaderValue::from_static(label(matched)));
                headers.insert(headers::SIMILARITY, header_num(similarity(matched)));
                if let Some(entry) = entry {
                    headers.insert(headers::ENTRY, HeaderValue::from(entry));
                }
                headers.insert(header::AGE, HeaderValue::from(age_secs));
            }
            Report::Miss { near, .. } => {
                headers.insert(headers::CACHE, HeaderValue::from_static("miss"));
                if let Some(best) = near.best {
                    headers.insert(headers::BEST_SIMILARITY, header_num(best));
                }
                if near.rejected > 0 {
                    headers.insert(headers::VERIFY_REJECTED, HeaderValue::from(near.rejected));
                }
                if let Some(reason) = near.skipped {
                    headers.insert(headers::SEMANTIC_SKIPPED, HeaderValue::from_static(reason));
                }
            }
            Report::Bypass { .. } => {
                headers.insert(headers::CACHE, HeaderValue::from_static("bypass"));
            }
        }
    }

    fn log(&self, ctx: &Context, status: Option<u16>) {
        let endpoint = ctx.endpoint.name().as_str();
        let elapsed_ms = super::ms(ctx.started);
        match *self {
            Report::Hit {
                model,
                matched,
                entry,
                coalesced,
                ..
            } => tracing::info!(
                endpoint,
                model,
                cache = "hit",
                matched = label(matched),
                similarity = similarity(matched),
                entry,
                coalesced,
                elapsed_ms,
                "request"
            ),
            Report::Miss { model, near } => tracing::info!(
                endpoint,
                model,
                cache = "miss",
                status,
                best_similarity = near.best,
                verify_rejected = near.rejected,
                semantic_skipped = near.skipped,
                elapsed_ms,
                "request"
            ),
            Report::Bypass { reason } => {
                tracing::info!(endpoint, cache = "bypass", reason, status, "request")
            }
        }
    }
}

/// The time the decision took, in the record (whatever the outcome).
pub(crate) fn timings(ctx: &Context, decided: &Decided) {
    let (lookup_ms, embedding_ms) = (decided.lookup_ms, decided.embedding_ms);
    ctx.tracker.update(|r| {
        r.lookup_ms = lookup_ms;
        r.embedding_ms = embedding_ms;
    });
}

/// `x-deja-match`: a follower reports how its twin came by the answer; `coalesced` only
/// when that was fresh from upstream.
fn label(matched: Matched) -> &'static str {
    match matched {
        Matched::Upstream => "coalesced",
        Matched::Exact => "exact",
        Matched::Semantic { .. } => "semantic",
    }
}

fn similarity(matched: Matched) -> f32 {
    match matched {
        Matched::Upstream | Matched::Exact => 1.0,
        Matched::Semantic { similarity } => similarity,
    }
}

fn header_num(value: f32) -> HeaderValue {
    // Every exact hit says 1.0: skip the float formatting and its allocation.
    if value == 1.0 {
        return HeaderValue::from_static("1.0000");
    }
    HeaderValue::from_str(&format!("{value:.4}")).unwrap_or(HeaderValue::from_static("0"))
}
