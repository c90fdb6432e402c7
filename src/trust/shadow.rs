//! One shadow verification, in the background: the hit's request goes upstream again (not
//! streamed, with deja's retries but no fallback model: another model's answer proves
//! nothing), and the fresh answer is judged against the cached one. The call is deja's own:
//! it never passes through the caller's key limits, and its cost is counted apart.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::Method;
use http::header::AUTHORIZATION;
use serde_json::Value;

use super::judge::{self, Verdict};
use super::{Job, Trust};
use crate::config::Config;
use crate::upstream::Outgoing;

/// Largest answer read back (a chat answer is kilobytes; this only bounds a broken upstream).
const MAX_ANSWER_BYTES: usize = 8 << 20;

pub(super) async fn run(trust: Arc<Trust>, job: Job) {
    let verdict = match trust.upstream_slots.clone().acquire_owned().await {
        Ok(_slot) => shadow(&trust, &job).await,
        Err(_) => None,
    };
    trust.queued.fetch_sub(1, Ordering::AcqRel);
    match verdict {
        Some(verdict) => trust.verdict(&job, verdict),
        None => {
            trust.counters.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The verdict on the hit, or `None` if the fresh answer could not be had.
async fn shadow(trust: &Trust, job: &Job) -> Option<Verdict> {
    let config = &job.config;
    let body = unstreamed(&job.body)?;
    let fresh = call(trust, config, job, &job.suffix, body, false).await?;
    let cached: Value = serde_json::from_str(&job.cached).ok()?;
    let (Some(cached), Some(fresh)) = (judge::answer_text(&cached), judge::answer_text(&fresh))
    else {
        return Some(Verdict::Unsure);
    };
    if cached == fresh {
        return Some(Verdict::Agree);
    }
    if let Some(model) = &config.cache.trust.judge_model {
        let ask = judge::judge_request(model, &job.question, &cached, &fresh);
        let ask = Bytes::from(serde_json::to_vec(&ask).ok()?);
        let answer = call(trust, config, job, "/chat/completions", ask, true).await;
        return Some(answer.map_or(Verdict::Unsure, |a| judge::read_judgement(&a)));
    }
    let embedder = trust.reach.embedder.as_ref()?;
    let auth = job.headers.get(AUTHORIZATION);
    let a = embedder.embed(judge::opening(&cached), auth).await;
    let b = embedder.embed(judge::opening(&fresh), auth).await;
    Some(match (a, b) {
        (Ok(a), Ok(b)) if judge::cosine(&a, &b) >= config.cache.trust.agreement_threshold => {
            Verdict::Agree
        }
        (Ok(_), Ok(_)) => Verdict::Disagree,
        _ => Verdict::Unsure,
    })
}

/// The request body asking for a plain JSON answer.
fn unstreamed(body: &Bytes) -> Option<Bytes> {
    let mut json: Value = serde_json::from_slice(body).ok()?;
    let object = json.as_object_mut()?;
    object.remove("stream");
    object.remove("stream_options");
    serde_json::to_vec(&json).ok().map(Bytes::from)
}

/// One upstream call with the caller's headers (deja's key replaces theirs in managed mode),
/// counted and priced; the answer if it is a 200 with a JSON body.
async fn call(
    trust: &Trust,
    config: &Config,
    job: &Job,
    suffix: &str,
    body: Bytes,
    judging: bool,
) -> Option<Value> {
    let counters = &trust.counters;
    let calls = if judging {
        &counters.judge_calls
    } else {
        &counters.shadow_calls
    };
    calls.fetch_add(1, Ordering::Relaxed);
    let out = Outgoing {
        method: &Method::POST,
        suffix,
        headers: &job.headers,
        parse_body: true,
    };
    let sent = trust
        .reach
        .upstream
        .send_retrying(&config.upstream, &out, body)
        .await
        .map_err(|failed| tracing::debug!(error = %failed.error, "shadow call failed"))
        .ok()?;
    let mut response = sent.response;
    let status = response.status();
    let mut answer = Vec::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        if answer.len() + chunk.len() > MAX_ANSWER_BYTES {
            return None;
        }
        answer.extend_from_slice(&chunk);
    }
    let answer: Value = serde_json::from_slice(&answer).ok()?;
    charge(trust, config, &answer);
    if status != http::StatusCode::OK {
        tracing::debug!(status = status.as_u16(), "shadow call answered an error");
        return None;
    }
    Some(answer)
}

/// Adds the call's tokens and price (by `[pricing]`) to the sampling's cost.
fn charge(trust: &Trust, config: &Config, answer: &Value) {
    let usage = &answer["usage"];
    let tokens = |a: &str, b: &str| usage[a].as_u64().or(usage[b].as_u64()).unwrap_or(0);
    let prompt = tokens("prompt_tokens", "input_tokens");
    let completion = tokens("completion_tokens", "output_tokens");
    let counters = &trust.counters;
    counters.prompt_tokens.fetch_add(prompt, Ordering::Relaxed);
    counters
        .completion_tokens
        .fetch_add(completion, Ordering::Relaxed);
    let model = answer["model"].as_str().unwrap_or_default();
    if let Some(price) = config.price(model) {
        *counters.cost_usd.lock() += price.cost(prompt, completion);
    }
}
