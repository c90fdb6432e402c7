//! The workers: each takes the oldest queued job, sends its request to deja's own listener
//! (the synchronous path, unchanged), and keeps the answer. A 429 is not a failure: an
//! upstream's pauses this replica's queue until its reset; a key's own limit (managed mode)
//! puts that job back to wait.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use http::HeaderMap;
use serde_json::Value;

use super::record::{Answer, Job, Status};
use super::store::{Place, Ticket};
use super::{Jobs, deliver};
use crate::app::App;
use crate::upstream::retry::retry_after;

/// Where workers send: the listener's own address, with a wildcard made loopback.
pub fn loopback(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => (Ipv4Addr::LOCALHOST, addr.port()).into(),
        IpAddr::V6(ip) if ip.is_unspecified() => (Ipv6Addr::LOCALHOST, addr.port()).into(),
        _ => addr,
    }
}

/// Waits while the queue is paused.
async fn unpaused(jobs: &Jobs) {
    loop {
        let until = jobs.paused_until_ms.load(Ordering::SeqCst);
        let now = jobs.mono_ms();
        if until <= now {
            return;
        }
        tokio::time::sleep(Duration::from_millis((until - now).min(1_000))).await;
    }
}

/// How long an idle worker waits before looking at the queue again (with Redis, jobs
/// submitted to other replicas arrive without a wake-up here).
const IDLE_POLL: Duration = Duration::from_millis(200);

pub async fn run(app: Arc<App>, jobs: Arc<Jobs>, target: SocketAddr) {
    let client = match reqwest::Client::builder().no_proxy().build() {
        Ok(client) => client,
        Err(err) => {
            tracing::error!(error = %err, "job worker could not build its client");
            return;
        }
    };
    loop {
        unpaused(&jobs).await;
        let next = jobs.store.next().await;
        jobs.store_health(&next);
        let ticket = match next {
            Ok(Some(ticket)) => ticket,
            Ok(None) => {
                let _ = tokio::time::timeout(IDLE_POLL, jobs.wake.notified()).await;
                continue;
            }
            Err(_) => {
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        jobs.note_depth();
        // There may be more: another idle worker looks too.
        jobs.wake.notify_one();
        let Some((job, ticket)) = jobs.claim(&app, ticket).await else {
            continue;
        };
        if job.runs == 1 {
            let waited = app.now_ms().saturating_sub(job.created_ms);
            jobs.metrics.wait_seconds.observe(waited as f64 / 1000.0);
        }
        run_one(&app, &jobs, &client, target, job, ticket).await;
    }
}

/// What the synchronous call said, read into a kept answer.
struct Reply {
    status: u16,
    headers: HeaderMap,
    body: bytes::Bytes,
}

async fn send(
    client: &reqwest::Client,
    target: SocketAddr,
    job: &Job,
) -> Result<Reply, reqwest::Error> {
    let Some(request) = &job.request else {
        // A finished job has no request left; `claim` only hands out queued ones.
        return Ok(Reply {
            status: 500,
            headers: HeaderMap::new(),
            body: bytes::Bytes::new(),
        });
    };
    let mut call = client
        .post(format!("http://{target}/v1{}", job.endpoint))
        .body(request.body.clone());
    for (name, value) in &request.headers {
        call = call.header(name, value);
    }
    let response = call.send().await?;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.bytes().await?;
    Ok(Reply {
        status,
        headers,
        body,
    })
}

async fn run_one(
    app: &Arc<App>,
    jobs: &Arc<Jobs>,
    client: &reqwest::Client,
    target: SocketAddr,
    job: Job,
    ticket: Ticket,
) {
    let started = Instant::now();
    let reply = match send(client, target, &job).await {
        Ok(reply) => reply,
        Err(err) => {
            // The listener is going away (shutdown) or overloaded: the job stays queued.
            tracing::warn!(job = %job.id, error = %err, "job could not reach the listener; requeued");
            requeue(jobs, ticket, Place::Back).await;
            tokio::time::sleep(Duration::from_secs(1)).await;
            return;
        }
    };
    jobs.metrics
        .run_seconds
        .observe(started.elapsed().as_secs_f64());
    if reply.status == 429 {
        let wait = retry_after(&reply.headers, std::time::SystemTime::now())
            .map(|wait| wait.as_millis() as u64)
            .or_else(|| reset_ms(&reply.headers))
            .unwrap_or(1_000)
            .max(50);
        let ours = app.config().managed() && !reply.headers.contains_key("x-deja-cache");
        if ours {
            // The caller's own deja key is over its limit: this job waits, the rest go on.
            tracing::debug!(job = %job.id, wait_ms = wait, "job waits for its key's limit");
            requeue_after(jobs, ticket, wait);
        } else {
            tracing::info!(wait_ms = wait, "upstream rate limit; job queue paused");
            jobs.metrics.paused.inc();
            jobs.pause_for(wait);
            requeue(jobs, ticket, Place::Front).await;
        }
        jobs.note_depth();
        return;
    }
    if !app.config().managed()
        && let Some(remaining) = header_u64(&reply.headers, "x-ratelimit-remaining-requests")
        && remaining <= app.config().jobs.pause_when_remaining
        && let Some(reset) = reset_ms(&reply.headers)
    {
        tracing::info!(
            wait_ms = reset,
            "upstream rate limit exhausted; job queue paused"
        );
        jobs.metrics.paused.inc();
        jobs.pause_for(reset);
    }
    finish(app, jobs, ticket, answer_of(reply)).await;
}

fn answer_of(reply: Reply) -> Answer {
    let keep = |name: &str| {
        name == "content-type"
            || name == "x-request-id"
            || name == "age"
            || name.starts_with("x-deja-")
    };
    let headers: BTreeMap<String, String> = reply
        .headers
        .iter()
        .filter(|(name, _)| keep(name.as_str()))
        .filter_map(|(name, value)| Some((name.to_string(), value.to_str().ok()?.to_string())))
        .collect();
    let body = serde_json::from_slice::<Value>(&reply.body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&reply.body).into_owned()));
    Answer {
        status_code: reply.status,
        headers,
        body,
    }
}

async fn finish(app: &Arc<App>, jobs: &Arc<Jobs>, ticket: Ticket, answer: Answer) {
    let status = if (200..300).contains(&answer.status_code) {
        Status::Succeeded
    } else {
        Status::Failed
    };
    let now = app.now_ms() / 1000;
    let updated = jobs
        .update(&ticket.id, &mut |job| {
            job.status = status;
            job.finished_at = Some(now);
            job.answer = Some(answer.clone());
            // The credentials are not needed any more.
            job.request = None;
            true
        })
        .await;
    jobs.store_health(&updated);
    jobs.metrics
        .finished
        .get_or_create(&super::metrics::StatusLabel {
            status: status.as_str(),
        })
        .inc();
    match updated {
        Ok(Some((job, _))) if job.callback.is_some() => {
            deliver::spawn(app.clone(), jobs.clone(), ticket)
        }
        Ok(_) => {
            let done = jobs.store.done(ticket).await;
            jobs.store_health(&done);
        }
        Err(err) => {
            // Left running: it runs again after the restart, or on the replica taking it over.
            tracing::warn!(job = %ticket.id, error = %err, "job answer could not be kept");
            jobs.store.abandon(ticket);
        }
    }
}

/// Marks the job queued again (it was running here); false if it is gone.
async fn mark_queued(jobs: &Jobs, id: &str) -> bool {
    let marked = jobs
        .update(id, &mut |job| {
            job.status = Status::Queued;
            true
        })
        .await;
    match marked {
        Ok(Some(_)) => true,
        Ok(None) => false,
        Err(err) => {
            tracing::warn!(job = %id, error = %err, "job store; job left as it was");
            true
        }
    }
}

async fn requeue(jobs: &Jobs, ticket: Ticket, place: Place) {
    if mark_queued(jobs, &ticket.id).await {
        put_back(jobs, ticket, place).await;
    } else {
        let _ = jobs.store.done(ticket).await;
    }
}

async fn put_back(jobs: &Jobs, ticket: Ticket, place: Place) {
    let id = ticket.id.clone();
    if let Err(err) = jobs.store.requeue(ticket, place).await {
        // Redis: the entry stays with this replica, unrenewed, so it is taken over later.
        tracing::warn!(job = %id, error = %err, "job could not be queued again; left for later");
    }
    jobs.wake.notify_one();
}

/// Queued at once (so it can be cancelled), taken again after `wait_ms`; the ticket stays
/// with this replica meanwhile (with Redis, renewed).
fn requeue_after(jobs: &Arc<Jobs>, ticket: Ticket, wait_ms: u64) {
    let jobs = jobs.clone();
    tokio::spawn(async move {
        if !mark_queued(&jobs, &ticket.id).await {
            let _ = jobs.store.done(ticket).await;
            return;
        }
        tokio::time::sleep(Duration::from_millis(wait_ms)).await;
        put_back(&jobs, ticket, Place::Back).await;
    });
}

fn header_u64(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers.get(name)?.to_str().ok()?.trim().parse().ok()
}

/// `x-ratelimit-reset-requests` (or `-tokens`), e.g. `1s`, `6m0s`, `120ms`, in ms.
fn reset_ms(headers: &HeaderMap) -> Option<u64> {
    ["x-ratelimit-reset-requests", "x-ratelimit-reset-tokens"]
        .iter()
        .filter_map(|name| duration_ms(headers.get(*name)?.to_str().ok()?))
        .max()
}

/// OpenAI's reset durations: a sequence of number+unit (`h`, `m`, `s`, `ms`).
fn duration_ms(text: &str) -> Option<u64> {
    let mut total = 0f64;
    let mut rest = text.trim();
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let (scale, unit_len) = if rest.starts_with("ms") {
            (1.0, 2)
        } else if rest.starts_with('h') {
            (3_600_000.0, 1)
        } else if rest.starts_with('m') {
            (60_000.0, 1)
        } else if rest.starts_with('s') {
            (1_000.0, 1)
        } else {
            return None;
        };
        total += number * scale;
        rest = &rest[unit_len..];
    }
    Some(total.ceil() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_durations_read_as_openai_writes_them() {
        assert_eq!(duration_ms("1s"), Some(1_000));
        assert_eq!(duration_ms("6m0s"), Some(360_000));
        assert_eq!(duration_ms("120ms"), Some(120));
        assert_eq!(duration_ms("0.5s"), Some(500));
        assert_eq!(duration_ms("1h2m"), Some(3_720_000));
        assert_eq!(duration_ms("soon"), None);
        assert_eq!(duration_ms(""), None);
    }
}
