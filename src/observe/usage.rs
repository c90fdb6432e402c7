//! The usage log: one JSON line per request (who, which model, what the cache did, tokens,
//! latencies, cost and savings), written by a background thread so a slow disk never holds
//! a request. Prompts and keys are never part of a record.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::time::Instant;

use serde::Serialize;

use crate::cache::{Candidate, SemanticOutcome};
use crate::wire::endpoint::EndpointName;

/// Lines waiting for the writer; past this, records are dropped (and counted).
const QUEUE: usize = 16 * 1024;

/// What the cache did with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    HitExact,
    HitSemantic,
    /// Answered by an identical request that was in flight.
    Coalesced,
    Miss,
    /// A cacheable endpoint whose request the cache stayed out of (controls, shape, cache off).
    Bypass,
    /// A path deja does not cache, relayed.
    Relay,
    /// Refused by a per-key limit (429).
    RateLimited,
    /// Refused for an unknown key (401).
    Unauthorized,
    /// Deja's own error before or instead of an upstream answer (bad request, upstream down).
    Error,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::HitExact => "hit_exact",
            Outcome::HitSemantic => "hit_semantic",
            Outcome::Coalesced => "coalesced",
            Outcome::Miss => "miss",
            Outcome::Bypass => "bypass",
            Outcome::Relay => "relay",
            Outcome::RateLimited => "rate_limited",
            Outcome::Unauthorized => "unauthorized",
            Outcome::Error => "error",
        }
    }

    /// Answered from the cache, without an upstream call.
    pub fn is_hit(self) -> bool {
        matches!(
            self,
            Outcome::HitExact | Outcome::HitSemantic | Outcome::Coalesced
        )
    }
}

/// One request, as the usage log and the metrics see it.
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    /// Milliseconds since the epoch when the request arrived.
    pub ts_ms: u64,
    pub key_id: Option<String>,
    pub tenant: Option<String>,
    pub endpoint: EndpointName,
    pub model_asked: Option<String>,
    pub model_used: Option<String>,
    pub cache: Outcome,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bypass_reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<&'static str>,
    pub similarity: Option<f32>,
    /// Best similarity seen by a semantic lookup that did not hit.
    pub best_similarity: Option<f32>,
    /// Why the semantic tier was skipped ("too-long": more tokens than the embedding window).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub semantic_skipped: Option<&'static str>,
    pub status: u16,
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
    pub latency_ms: f64,
    pub upstream_ms: Option<f64>,
    pub embedding_ms: Option<f64>,
    pub lookup_ms: Option<f64>,
    pub retries: u32,
    /// What the upstream call cost (misses).
    pub cost_usd: Option<f64>,
    /// What the upstream call would have cost (hits).
    pub saved_usd: Option<f64>,
    #[serde(skip)]
    pub retry_causes: Vec<&'static str>,
    #[serde(skip)]
    pub started: Instant,
    /// The semantic lookup's candidates, for the dashboard (src/ops/dashboard/); never logged.
    #[serde(skip)]
    pub semantic: Option<Box<SemanticTrace>>,
}

/// Longest prompt excerpt kept when `admin.show_prompts` is on.
const PROMPT_CHARS: usize = 300;

/// What the flow notes after a semantic lookup (`Record::semantic`).
#[derive(Debug, Clone, Default)]
pub struct SemanticTrace {
    pub namespace: String,
    /// Usable candidates from the most similar down, with verification's verdict.
    pub candidates: Vec<Candidate>,
    /// Candidates above the threshold that verification turned down.
    pub rejected: usize,
    /// Bytes of text embedded (prices the embedding call of the `openai` provider).
    pub embedded_bytes: usize,
    /// The last user message, only with `admin.show_prompts`.
    pub prompt: Option<String>,
}

impl SemanticTrace {
    /// The trace of one lookup; `show_prompts` keeps an excerpt of the embedded text.
    pub fn of(
        namespace: &str,
        text: Option<&str>,
        outcome: &SemanticOutcome,
        show_prompts: bool,
    ) -> Box<SemanticTrace> {
        Box::new(SemanticTrace {
            namespace: namespace.to_string(),
            candidates: outcome.candidates.clone(),
            rejected: outcome.rejected,
            embedded_bytes: text.map_or(0, str::len),
            prompt: text
                .filter(|_| show_prompts)
                .map(|t| t.chars().take(PROMPT_CHARS).collect()),
        })
    }
}

impl Record {
    pub fn new(endpoint: EndpointName, ts_ms: u64) -> Record {
        Record {
            ts_ms,
            key_id: None,
            tenant: None,
            endpoint,
            model_asked: None,
            model_used: None,
            cache: Outcome::Relay,
            bypass_reason: None,
            limit: None,
            similarity: None,
            best_similarity: None,
            semantic_skipped: None,
            status: 0,
            prompt_tokens: None,
            completion_tokens: None,
            latency_ms: 0.0,
            upstream_ms: None,
            embedding_ms: None,
            lookup_ms: None,
            retries: 0,
            cost_usd: None,
            saved_usd: None,
            retry_causes: Vec::new(),
            started: Instant::now(),
            semantic: None,
        }
    }

    /// Takes prompt and completion tokens from a stored or upstream answer's `usage` (chat and
    /// completions name them prompt/completion, Responses input/output).
    pub fn take_usage(&mut self, answer: &serde_json::Value) {
        if let Some(usage) = answer.get("usage") {
            self.take_usage_value(usage);
        }
    }

    /// The same from the `usage` object itself.
    pub fn take_usage_value(&mut self, usage: &serde_json::Value) {
        if !usage.is_object() {
            return;
        }
        let field = |a: &str, b: &str| usage.get(a).or_else(|| usage.get(b))?.as_u64();
        self.prompt_tokens = field("prompt_tokens", "input_tokens");
        self.completion_tokens = field("completion_tokens", "output_tokens").or(Some(0));
    }
}

/// The background writer of the usage log; `None` target means off.
pub struct UsageLog {
    sender: Option<SyncSender<Vec<u8>>>,
    dropped: AtomicU64,
}

impl UsageLog {
    /// `target`: empty = off, `stdout`, or a file appended to.
    pub fn open(target: &str) -> std::io::Result<UsageLog> {
        let out: Box<dyn Write + Send> = match target {
            "" => {
                return Ok(UsageLog {
                    sender: None,
                    dropped: AtomicU64::new(0),
                });
            }
            "stdout" | "-" => Box::new(std::io::stdout()),
            path => {
                if let Some(parent) = std::path::Path::new(path).parent() {
                    std::fs::create_dir_all(parent).ok();
                }
                Box::new(
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(path)?,
                )
            }
        };
        let (sender, receiver) = mpsc::sync_channel::<Vec<u8>>(QUEUE);
        std::thread::Builder::new()
            .name("deja-usage-log".into())
            .spawn(move || write_lines(receiver, out))?;
        Ok(UsageLog {
            sender: Some(sender),
            dropped: AtomicU64::new(0),
        })
    }

    pub fn write(&self, record: &Record) {
        let Some(sender) = &self.sender else { return };
        let Ok(mut line) = serde_json::to_vec(record) else {
            return;
        };
        line.push(b'\n');
        if let Err(TrySendError::Full(_)) = sender.try_send(line) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Records lost because the writer fell behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

fn write_lines(receiver: mpsc::Receiver<Vec<u8>>, mut out: Box<dyn Write + Send>) {
    let mut warned = false;
    while let Ok(line) = receiver.recv() {
        let mut result = out.write_all(&line);
        // Drain what queued meanwhile, then flush once.
        while let Ok(line) = receiver.try_recv() {
            result = result.and_then(|_| out.write_all(&line));
        }
        if let Err(err) = result.and_then(|_| out.flush())
            && !warned
        {
            tracing::warn!(error = %err, "usage log write failed");
            warned = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn usage_of_both_shapes() {
        let mut record = Record::new(crate::wire::endpoint::EndpointName::ChatCompletions, 0);
        record.take_usage(&json!({"usage": {"prompt_tokens": 12, "completion_tokens": 3}}));
        assert_eq!(
            (record.prompt_tokens, record.completion_tokens),
            (Some(12), Some(3))
        );
        let mut record = Record::new(EndpointName::Responses, 0);
        record.take_usage(&json!({"usage": {"input_tokens": 7, "output_tokens": 2}}));
        assert_eq!(
            (record.prompt_tokens, record.completion_tokens),
            (Some(7), Some(2))
        );
        let mut record = Record::new(EndpointName::Responses, 0);
        record.take_usage(&json!({"usage": null}));
        assert_eq!(record.prompt_tokens, None);
    }

    #[test]
    fn record_serialises_without_internal_fields() {
        let mut record = Record::new(crate::wire::endpoint::EndpointName::ChatCompletions, 5);
        record.cache = Outcome::HitSemantic;
        let text = serde_json::to_string(&record).unwrap();
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["cache"], "hit_semantic");
        assert_eq!(value["ts_ms"], 5);
        assert!(value.get("started").is_none() && value.get("retry_causes").is_none());
    }

    #[test]
    fn prompts_only_when_allowed() {
        let outcome = SemanticOutcome::default();
        let hidden = SemanticTrace::of("", Some("secret question"), &outcome, false);
        assert_eq!(hidden.prompt, None);
        assert_eq!(hidden.embedded_bytes, 15);
        let shown = SemanticTrace::of("", Some("secret question"), &outcome, true);
        assert_eq!(shown.prompt.as_deref(), Some("secret question"));
    }
}
