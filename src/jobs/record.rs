//! One job as it is kept: the request to run, its state, its answer and its webhook.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Running => "running",
            Status::Succeeded => "succeeded",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
        }
    }

    pub fn finished(self) -> bool {
        matches!(self, Status::Succeeded | Status::Failed | Status::Cancelled)
    }
}

/// The synchronous request a job replays. Holds the caller's credentials, so it is dropped
/// as soon as the job has finished.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Submitted {
    pub headers: Vec<(String, String)>,
    pub body: String,
}

/// The answer the synchronous call gave.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Answer {
    pub status_code: u16,
    /// `content-type`, `x-request-id` and the `x-deja-*` outcome headers.
    pub headers: BTreeMap<String, String>,
    /// The JSON body, or the text of a stream (`stream: true`).
    pub body: Value,
}

/// One webhook delivery attempt.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Attempt {
    pub at: u64,
    pub status_code: Option<u16>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Callback {
    pub url: String,
    pub delivered: bool,
    pub attempts: Vec<Attempt>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Job {
    pub id: String,
    /// Who may see it: the caller's credential hash (or managed key).
    pub tenant: String,
    /// The synchronous path after `/v1`, e.g. `/chat/completions`.
    pub endpoint: String,
    /// Order of submission, kept across restarts.
    pub seq: u64,
    pub status: Status,
    pub created_at: u64,
    pub created_ms: u64,
    pub started_at: Option<u64>,
    pub finished_at: Option<u64>,
    /// Times the job was started (a job running at a crash runs again).
    pub runs: u32,
    pub request: Option<Submitted>,
    pub answer: Option<Answer>,
    /// Why it failed without an answer.
    pub error: Option<String>,
    pub callback: Option<Callback>,
}

impl Job {
    pub fn poll_url(&self) -> String {
        format!("/v1/async/jobs/{}", self.id)
    }

    /// The job as callers see it (poll, cancel, webhook).
    pub fn view(&self) -> Value {
        let response = self.answer.as_ref().map(|answer| {
            json!({
                "status_code": answer.status_code,
                "headers": answer.headers,
                "body": answer.body,
            })
        });
        let usage = self
            .answer
            .as_ref()
            .and_then(|answer| answer.body.get("usage"))
            .cloned();
        let webhook = self.callback.as_ref().map(|callback| {
            json!({
                "url": callback.url,
                "delivered": callback.delivered,
                "attempts": callback.attempts,
            })
        });
        json!({
            "id": self.id,
            "object": "deja.job",
            "endpoint": format!("/v1{}", self.endpoint),
            "status": self.status.as_str(),
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "url": self.poll_url(),
            "response": response,
            "usage": usage,
            "error": self.error.as_ref().map(|message| json!({"message": message})),
            "webhook": webhook,
        })
    }
}
