//! One batch as deja keeps it: the caller's Batch object fields, what became of each input
//! line (answered from the cache, refused, sent upstream, or a repeat of a sent line), and
//! the upstream batch that carries the lines sent. `view` renders OpenAI's Batch object.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::cache::Partition;
use crate::endpoints::embeddings::for_batches::InputKeys;

/// A batch lives for a day at most (OpenAI's only `completion_window`, `24h`).
pub const WINDOW_SECS: u64 = 24 * 3600;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Validating,
    Failed,
    InProgress,
    Finalizing,
    Completed,
    Expired,
    Cancelling,
    Cancelled,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Validating => "validating",
            Status::Failed => "failed",
            Status::InProgress => "in_progress",
            Status::Finalizing => "finalizing",
            Status::Completed => "completed",
            Status::Expired => "expired",
            Status::Cancelling => "cancelling",
            Status::Cancelled => "cancelled",
        }
    }

    /// Read from an upstream Batch object's `status`.
    pub fn parse(text: &str) -> Option<Status> {
        serde_json::from_value(Value::String(text.to_string())).ok()
    }

    pub fn finished(self) -> bool {
        matches!(
            self,
            Status::Failed | Status::Completed | Status::Expired | Status::Cancelled
        )
    }
}

/// What the cache needs to store a sent line's answer as a synchronous miss would.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ToStore {
    pub scope: [u8; 32],
    pub exact: [u8; 32],
    pub model: String,
    pub prompt: Option<String>,
    pub vector: Option<Vec<f32>>,
}

/// What became of one input line.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Fate {
    /// Answered by deja itself: a cache hit (status 200) or deja's own refusal of the body
    /// (the 400 the synchronous call gets). `response` is the output line's `response`.
    Answered { response: Value },
    /// In the upstream batch; its answer is stored in the cache when `store` (a flow
    /// endpoint's line) or `inputs` (an embeddings line, per input) is set.
    Sent {
        store: Option<ToStore>,
        #[serde(default)]
        inputs: Option<InputKeys>,
    },
    /// The same request as line `of` (same exact key): it gets that line's answer.
    Repeat { of: usize },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Line {
    pub custom_id: String,
    pub fate: Fate,
}

/// The batch made upstream for the lines that were sent.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UpstreamBatch {
    pub id: String,
    pub input_file_id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Batch {
    pub id: String,
    /// Whose batch this is (the caller's credentials, even with `cache.shared`); another
    /// tenant gets a 404.
    pub tenant: String,
    /// Whose cache the lines read and the answers are written to (the create call's
    /// partition, `x-deja-namespace` included).
    pub cache_owner: Partition,
    /// Orders `GET /v1/batches` (newest first).
    pub seq: u64,
    pub endpoint: String,
    /// The caller's input file (upstream).
    pub input_file_id: String,
    pub completion_window: String,
    pub metadata: Value,
    pub model: Option<String>,
    pub status: Status,
    pub errors: Option<Value>,
    pub created_at: u64,
    pub in_progress_at: Option<u64>,
    pub expires_at: Option<u64>,
    pub finalizing_at: Option<u64>,
    pub completed_at: Option<u64>,
    pub failed_at: Option<u64>,
    pub expired_at: Option<u64>,
    pub cancelling_at: Option<u64>,
    pub cancelled_at: Option<u64>,
    pub output_file_id: Option<String>,
    pub error_file_id: Option<String>,
    pub completed: usize,
    pub failed: usize,
    pub lines: Vec<Line>,
    pub upstream: Option<UpstreamBatch>,
}

impl Batch {
    /// OpenAI's Batch object.
    pub fn view(&self) -> Value {
        json!({
            "id": self.id,
            "object": "batch",
            "endpoint": self.endpoint,
            "model": self.model,
            "errors": self.errors,
            "input_file_id": self.input_file_id,
            "completion_window": self.completion_window,
            "status": self.status.as_str(),
            "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id,
            "created_at": self.created_at,
            "in_progress_at": self.in_progress_at,
            "expires_at": self.expires_at,
            "finalizing_at": self.finalizing_at,
            "completed_at": self.completed_at,
            "failed_at": self.failed_at,
            "expired_at": self.expired_at,
            "cancelling_at": self.cancelling_at,
            "cancelled_at": self.cancelled_at,
            "request_counts": {
                "total": self.lines.len(),
                "completed": self.completed,
                "failed": self.failed,
            },
            "usage": null,
            "metadata": self.metadata,
        })
    }

    /// Failed at validation, with OpenAI's `errors` list.
    pub fn fail(&mut self, now: u64, errors: Vec<Value>) {
        self.status = Status::Failed;
        self.failed_at = Some(now);
        self.errors = Some(json!({"object": "list", "data": errors}));
    }
}

/// One entry of a Batch's `errors.data`: a problem with the input file.
pub fn validation_error(code: &str, message: String, line: Option<usize>) -> Value {
    json!({"code": code, "message": message, "param": null, "line": line})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_read_as_openai_spells_them() {
        for status in [
            Status::Validating,
            Status::InProgress,
            Status::Finalizing,
            Status::Cancelling,
            Status::Completed,
        ] {
            assert_eq!(Status::parse(status.as_str()), Some(status));
        }
        assert_eq!(Status::parse("running"), None);
        assert!(Status::Expired.finished());
        assert!(!Status::Cancelling.finished());
    }
}
