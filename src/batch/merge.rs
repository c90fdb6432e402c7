//! Merging a finished batch: the cached answers and the upstream batch's output and error
//! lines, back in the input's order, each line as OpenAI writes it (`id`, `custom_id`,
//! `response {status_code, request_id, body}`, `error`). Successful lines go to the output
//! file, the others to the error file. Every successful upstream answer is stored in the
//! cache as a synchronous miss stores it, so the next synchronous call hits.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{Value, json};

use super::charge::Used;
use super::record::{Batch, Fate, ToStore};
use crate::app::App;
use crate::cache::Lookup;
use crate::cache::key::Hash32;
use crate::endpoints::embeddings::for_batches::InputKeys;

/// The two files' contents and their line counts.
#[derive(Default)]
pub struct Merged {
    pub output: Vec<u8>,
    pub errors: Vec<u8>,
    pub completed: usize,
    pub failed: usize,
    /// Successful upstream answers handed to the cache (a full or read-only store may
    /// still refuse them, as it refuses a synchronous miss).
    pub to_cache: usize,
    /// What the successful upstream lines used (settles the caller's managed key).
    pub used: Used,
}

/// Why a sent line has no upstream result (the upstream batch expired or was cancelled).
pub struct Unfinished {
    pub code: &'static str,
    pub message: &'static str,
}

pub const EXPIRED: Unfinished = Unfinished {
    code: "batch_expired",
    message: "This request could not be executed before the completion window expired.",
};

pub const CANCELLED: Unfinished = Unfinished {
    code: "batch_cancelled",
    message: "This request was not executed because the batch was cancelled.",
};

/// Upstream output and error lines by `custom_id` (a line that is not JSON is skipped).
pub fn by_custom_id(files: &[&[u8]]) -> HashMap<String, Value> {
    let mut lines = HashMap::new();
    for content in files {
        for line in String::from_utf8_lossy(content).lines() {
            if let Ok(value) = serde_json::from_str::<Value>(line)
                && let Some(id) = value["custom_id"].as_str()
            {
                lines.insert(id.to_string(), value);
            }
        }
    }
    lines
}

/// Merges `batch`'s lines with the upstream's `results`, storing successful answers.
pub async fn merge(
    app: &Arc<App>,
    batch: &Batch,
    results: &HashMap<String, Value>,
    unfinished: &Unfinished,
) -> Merged {
    let mut merged = Merged::default();
    let config = app.config();
    // Each line's (response, error), kept for the repeats that point at it.
    let mut outcomes: Vec<(Value, Value)> = Vec::with_capacity(batch.lines.len());
    for line in &batch.lines {
        let (id, response, error) = match &line.fate {
            Fate::Answered { response } => (batch_request_id(), response.clone(), Value::Null),
            Fate::Sent { store, inputs } => match results.get(&line.custom_id) {
                Some(result) => {
                    let response = result["response"].clone();
                    if response["status_code"] == 200 {
                        let body = &response["body"];
                        merged.used.add(&config, body);
                        let stored = match (store, inputs) {
                            (Some(store), _) => store_line(app, batch, store, body).await,
                            (None, Some(inputs)) => store_inputs(app, batch, inputs, body).await,
                            (None, None) => false,
                        };
                        merged.to_cache += usize::from(stored);
                    }
                    let id = result["id"]
                        .as_str()
                        .map_or_else(batch_request_id, str::to_string);
                    (id, response, result["error"].clone())
                }
                None => (
                    batch_request_id(),
                    Value::Null,
                    json!({"code": unfinished.code, "message": unfinished.message}),
                ),
            },
            Fate::Repeat { of } => {
                let (response, error) = outcomes.get(*of).cloned().unwrap_or_default();
                (batch_request_id(), response, error)
            }
        };
        let ok = error.is_null() && response["status_code"] == 200;
        let written = json!({
            "id": id,
            "custom_id": line.custom_id,
            "response": response,
            "error": error,
        });
        let file = if ok {
            merged.completed += 1;
            &mut merged.output
        } else {
            merged.failed += 1;
            &mut merged.errors
        };
        file.extend_from_slice(written.to_string().as_bytes());
        file.push(b'\n');
        outcomes.push((response, error));
    }
    merged
}

/// Stores one answer under the line's keys, in the batch's partition; false when the cache
/// is off or the body is not an answer.
async fn store_line(app: &Arc<App>, batch: &Batch, store: &ToStore, body: &Value) -> bool {
    let Some(cache) = app.cache.clone() else {
        return false;
    };
    if !body.is_object() {
        return false;
    }
    let lookup = Lookup {
        scope: Hash32(store.scope),
        exact: Hash32(store.exact),
        semantic_text: store.prompt.clone(),
        model: store.model.clone(),
        stream: false,
        include_usage: false,
    };
    let owner = batch.cache_owner.clone();
    let vector = store.vector.clone();
    crate::flow::store_answer(cache, lookup, vector, owner, body.clone()).await;
    true
}

/// Stores an embeddings line's answer per input, as the synchronous call stores it.
async fn store_inputs(app: &Arc<App>, batch: &Batch, inputs: &InputKeys, body: &Value) -> bool {
    let Some(cache) = app.cache.clone() else {
        return false;
    };
    let owner = batch.cache_owner.clone();
    crate::endpoints::embeddings::for_batches::store_answer(&cache, inputs, owner, body).await
}

fn batch_request_id() -> String {
    format!("batch_req_{:032x}", fastrand::u128(..))
}
