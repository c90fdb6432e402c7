//! Delivers a finished job to its callback URL: signed, at least once, with retries and
//! exponential backoff, each attempt recorded on the job. Resumed after a restart.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use super::Jobs;
use super::metrics::OutcomeLabel;
use super::record::Attempt;
use super::store::Ticket;
use super::webhook::{secret_key, signature};
use crate::app::App;

/// Delivers the ticket's job, then settles the ticket (with Redis, a replica dying before
/// the webhook is delivered leaves it to the replica that takes the job over).
pub fn spawn(app: Arc<App>, jobs: Arc<Jobs>, ticket: Ticket) {
    tokio::spawn(async move {
        if deliver(&app, &jobs, &ticket.id).await {
            let done = jobs.store.done(ticket).await;
            jobs.store_health(&done);
        } else {
            jobs.store.abandon(ticket);
        }
    });
}

/// The payload: the job as a poll shows it, without the delivery record (which changes
/// between attempts while the body must not).
fn payload(view: &Value, status: &str) -> Vec<u8> {
    let mut data = view.clone();
    if let Some(map) = data.as_object_mut() {
        map.remove("webhook");
    }
    let body = json!({"type": format!("job.{status}"), "data": data});
    serde_json::to_vec(&body).unwrap_or_default()
}

/// Tries until delivered or out of attempts: true then (or when it never can be); false
/// when the store failed and delivery is left for later.
async fn deliver(app: &Arc<App>, jobs: &Jobs, id: &str) -> bool {
    let config = app.config().jobs.clone();
    let Some(key) = config.webhook_secret.as_deref().and_then(secret_key) else {
        tracing::warn!(job = %id, "job has a callback but jobs.webhook_secret is unset");
        return true;
    };
    let client = match reqwest::Client::builder()
        .no_proxy()
        // A redirect could lead anywhere, past the allow-list.
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(config.webhook_timeout_secs))
        .build()
    {
        Ok(client) => client,
        Err(err) => {
            tracing::warn!(error = %err, "webhook client");
            return false;
        }
    };
    loop {
        let job = match jobs.store.load(id).await {
            Ok(Some(job)) => job,
            Ok(None) => return true,
            Err(err) => {
                tracing::warn!(job = %id, error = %err, "webhook delivery left for later");
                return false;
            }
        };
        let Some(callback) = &job.callback else {
            return true;
        };
        let done = callback.attempts.len() as u32;
        if callback.delivered || done >= config.webhook_max_attempts {
            return true;
        }
        if done > 0 {
            let wait = config
                .webhook_initial_backoff_ms
                .saturating_mul(1 << (done - 1).min(30))
                .min(config.webhook_max_backoff_ms);
            tokio::time::sleep(Duration::from_millis(wait)).await;
        }
        let body = payload(&job.view(), job.status.as_str());
        let timestamp = app.now_ms() / 1000;
        let sent = client
            .post(&callback.url)
            .header("content-type", "application/json")
            .header("webhook-id", &job.id)
            .header("webhook-timestamp", timestamp.to_string())
            .header(
                "webhook-signature",
                signature(&key, &job.id, timestamp, &body),
            )
            .body(body)
            .send()
            .await;
        let attempt = match &sent {
            Ok(response) => Attempt {
                at: timestamp,
                status_code: Some(response.status().as_u16()),
                error: None,
            },
            Err(err) => Attempt {
                at: timestamp,
                status_code: None,
                error: Some(if err.is_timeout() {
                    "timeout".into()
                } else if err.is_connect() {
                    "connect".into()
                } else {
                    "request".into()
                }),
            },
        };
        let delivered = attempt
            .status_code
            .is_some_and(|code| (200..300).contains(&code));
        jobs.metrics
            .webhook_attempts
            .get_or_create(&OutcomeLabel {
                outcome: if delivered { "delivered" } else { "failed" },
            })
            .inc();
        let recorded = jobs
            .update(id, &mut |job| {
                let Some(callback) = &mut job.callback else {
                    return false;
                };
                callback.attempts.push(attempt.clone());
                callback.delivered = delivered;
                true
            })
            .await;
        if let Err(err) = recorded {
            tracing::warn!(job = %id, error = %err, "webhook attempt not recorded");
            return false;
        }
        if delivered {
            return true;
        }
    }
}
