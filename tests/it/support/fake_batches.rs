//! The fake upstream's Files and Batches API. Declared as a private child module of
//! `fake_upstream.rs`. Files: multipart upload (`purpose`, `file`), list, retrieve, content.
//! Batches: create, retrieve, cancel, list. A batch runs each input line through the fake's
//! own chat, completions, responses and embeddings handlers, once it has been polled
//! `polls_before_done` times (0: at creation), and writes OpenAI's output and error files.
//! Every line received in a batch input is recorded, so tests can assert what was sent.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderValue, Response, header};
use http_body_util::BodyExt;
use parking_lot::Mutex;
use serde_json::{Value, json};

use super::{Body, RecordedRequest, State, json_response, openai_error};

#[derive(Default)]
pub(super) struct Store {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    files: HashMap<String, (Value, Bytes)>,
    /// File ids in upload order (the list is newest first unless `order=asc`).
    file_order: Vec<String>,
    batches: HashMap<String, FakeBatch>,
    /// Ids in creation order (the list is newest first).
    order: Vec<String>,
    polls_before_done: usize,
    /// Every line of every batch input, as received.
    lines: Vec<Value>,
    runs: usize,
    /// How long the next batch retrieve waits before it answers.
    stall_next_retrieve: Option<std::time::Duration>,
}

struct FakeBatch {
    object: Value,
    polls_left: usize,
    lines: Vec<Value>,
}

impl Store {
    pub(super) fn set_polls_before_done(&self, polls: usize) {
        self.inner.lock().polls_before_done = polls;
    }

    pub(super) fn lines(&self) -> Vec<Value> {
        self.inner.lock().lines.clone()
    }

    pub(super) fn stall_next_retrieve(&self, stall: std::time::Duration) {
        self.inner.lock().stall_next_retrieve = Some(stall);
    }

    pub(super) fn batches_created(&self) -> usize {
        self.inner.lock().order.len()
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn hex_id(prefix: &str) -> String {
    format!("{prefix}{:024x}", fastrand::u128(..) >> 32)
}

/// Answers a Files or Batches call, or `None` for any other path.
pub(super) async fn handle(state: &State, req: &RecordedRequest) -> Option<Response<Body>> {
    let path = req.path.strip_prefix("/v1/")?;
    let segments: Vec<&str> = path.split('/').collect();
    let store = &state.batches;
    Some(match (req.method.as_str(), segments.as_slice()) {
        ("POST", ["files"]) => upload(store, req),
        ("GET", ["files"]) => list_files(store, req.query.as_deref().unwrap_or_default()),
        ("GET", ["files", id]) => match store.inner.lock().files.get(*id) {
            Some((object, _)) => json_response(200, object.to_string()),
            None => no_such_file(id),
        },
        ("GET", ["files", id, "content"]) => match store.inner.lock().files.get(*id) {
            Some((_, content)) => {
                let mut response = json_response(200, content.clone());
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/octet-stream"),
                );
                response
            }
            None => no_such_file(id),
        },
        ("POST", ["batches"]) => create(state, &req.body).await,
        ("GET", ["batches"]) => {
            let inner = store.inner.lock();
            let data: Vec<Value> = inner
                .order
                .iter()
                .rev()
                .filter_map(|id| inner.batches.get(id).map(|b| b.object.clone()))
                .collect();
            let body = json!({"object": "list", "data": data, "first_id": data.first().map(|b| b["id"].clone()),
                "last_id": data.last().map(|b| b["id"].clone()), "has_more": false});
            json_response(200, body.to_string())
        }
        ("GET", ["batches", id]) => {
            let stall = store.inner.lock().stall_next_retrieve.take();
            if let Some(stall) = stall {
                tokio::time::sleep(stall).await;
            }
            retrieve(state, id).await
        }
        ("POST", ["batches", id, "cancel"]) => {
            let mut inner = store.inner.lock();
            match inner.batches.get_mut(*id) {
                Some(batch) => {
                    if matches!(
                        batch.object["status"].as_str(),
                        Some("validating" | "in_progress")
                    ) {
                        batch.object["status"] = json!("cancelling");
                        batch.object["cancelling_at"] = json!(now());
                    }
                    json_response(200, batch.object.to_string())
                }
                None => no_such_batch(id),
            }
        }
        _ => return None,
    })
}

fn no_such_file(id: &str) -> Response<Body> {
    let body = json!({"error": {"message": format!("No such File object: {id}"),
        "type": "invalid_request_error", "param": "id", "code": null}});
    json_response(404, body.to_string())
}

fn no_such_batch(id: &str) -> Response<Body> {
    let body = json!({"error": {"message": format!("No batch found with id '{id}'."),
        "type": "invalid_request_error", "param": null, "code": null}});
    json_response(404, body.to_string())
}

/// `POST /v1/files`: a multipart form with `purpose` and `file`.
fn upload(store: &Store, req: &RecordedRequest) -> Response<Body> {
    let content_type = req
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let Some(boundary) = content_type.split("boundary=").nth(1) else {
        return openai_error(400, "fake upstream: expected multipart/form-data");
    };
    let boundary = boundary.trim_matches('"');
    let mut purpose = None;
    let mut file = None;
    for (disposition, content) in multipart_parts(&req.body, boundary) {
        if disposition.contains("name=\"purpose\"") {
            purpose = Some(String::from_utf8_lossy(&content).into_owned());
        } else if disposition.contains("name=\"file\"") {
            let filename = disposition
                .split("filename=\"")
                .nth(1)
                .and_then(|rest| rest.split('"').next())
                .unwrap_or("upload")
                .to_string();
            file = Some((filename, content));
        }
    }
    let (Some(purpose), Some((filename, content))) = (purpose, file) else {
        return openai_error(400, "Missing required parameter: 'purpose' or 'file'.");
    };
    let id = hex_id("file-");
    let object = json!({
        "id": id, "object": "file", "bytes": content.len(), "created_at": now(),
        "filename": filename, "purpose": purpose, "status": "processed",
        "status_details": null, "expires_at": null,
    });
    let mut inner = store.inner.lock();
    inner.file_order.push(id.clone());
    inner.files.insert(id, (object.clone(), content));
    json_response(200, object.to_string())
}

/// `GET /v1/files?purpose=&limit=&order=&after=`: newest first by default, `has_more` when
/// `limit` cut the list.
fn list_files(store: &Store, query: &str) -> Response<Body> {
    let (mut purpose, mut limit, mut ascending, mut after) = (None, 10_000, false, None);
    for (name, value) in query.split('&').filter_map(|p| p.split_once('=')) {
        match name {
            "purpose" => purpose = Some(value.to_string()),
            "limit" => limit = value.parse().unwrap_or(10_000),
            "order" => ascending = value == "asc",
            "after" => after = Some(value.to_string()),
            _ => {}
        }
    }
    let inner = store.inner.lock();
    let mut files: Vec<&Value> = inner
        .file_order
        .iter()
        .filter_map(|id| inner.files.get(id).map(|(object, _)| object))
        .filter(|object| {
            purpose
                .as_ref()
                .is_none_or(|p| object["purpose"] == p.as_str())
        })
        .collect();
    if !ascending {
        files.reverse();
    }
    let start = after
        .and_then(|after| files.iter().position(|f| f["id"] == after.as_str()))
        .map_or(0, |i| i + 1);
    let data: Vec<&Value> = files.iter().skip(start).take(limit).copied().collect();
    let body = json!({"object": "list", "data": data,
        "first_id": data.first().map(|f| f["id"].clone()),
        "last_id": data.last().map(|f| f["id"].clone()),
        "has_more": files.len() > start + data.len()});
    json_response(200, body.to_string())
}

/// The parts of a multipart body: each one's `Content-Disposition` line and content.
fn multipart_parts(body: &[u8], boundary: &str) -> Vec<(String, Bytes)> {
    let delimiter = format!("--{boundary}");
    let mut parts = Vec::new();
    for chunk in split(body, delimiter.as_bytes()).into_iter().skip(1) {
        let Some(head_end) = find(chunk, b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&chunk[..head_end]);
        let disposition = head
            .lines()
            .find(|l| l.to_ascii_lowercase().starts_with("content-disposition"))
            .unwrap_or_default()
            .to_string();
        let content = &chunk[head_end + 4..];
        let content = content.strip_suffix(b"\r\n").unwrap_or(content);
        parts.push((disposition, Bytes::copy_from_slice(content)));
    }
    parts
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn split<'a>(mut body: &'a [u8], delimiter: &[u8]) -> Vec<&'a [u8]> {
    let mut pieces = Vec::new();
    while let Some(at) = find(body, delimiter) {
        pieces.push(&body[..at]);
        body = &body[at + delimiter.len()..];
    }
    pieces.push(body);
    pieces
}

async fn create(state: &State, body: &Bytes) -> Response<Body> {
    let Ok(request) = serde_json::from_slice::<Value>(body) else {
        return openai_error(400, "fake upstream: invalid JSON body");
    };
    let input = request["input_file_id"].as_str().unwrap_or_default();
    let content = match state.batches.inner.lock().files.get(input) {
        Some((_, content)) => content.clone(),
        None => return no_such_file(input),
    };
    let lines: Vec<Value> = String::from_utf8_lossy(&content)
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect();
    let created = now();
    let id = hex_id("batch_");
    let object = json!({
        "id": id, "object": "batch", "endpoint": request["endpoint"], "model": null,
        "errors": null, "input_file_id": input,
        "completion_window": request["completion_window"], "status": "validating",
        "output_file_id": null, "error_file_id": null, "created_at": created,
        "in_progress_at": null, "expires_at": created + 86_400, "finalizing_at": null,
        "completed_at": null, "failed_at": null, "expired_at": null, "cancelling_at": null,
        "cancelled_at": null, "request_counts": {"total": lines.len(), "completed": 0, "failed": 0},
        "usage": null, "metadata": request.get("metadata").cloned().unwrap_or(Value::Null),
    });
    let polls = {
        let mut inner = state.batches.inner.lock();
        inner.lines.extend(lines.iter().cloned());
        inner.order.push(id.clone());
        let polls = inner.polls_before_done;
        inner.batches.insert(
            id.clone(),
            FakeBatch {
                object,
                polls_left: polls,
                lines,
            },
        );
        polls
    };
    if polls == 0 {
        run(state, &id).await;
    }
    retrieve_object(state, &id)
}

async fn retrieve(state: &State, id: &str) -> Response<Body> {
    let due = {
        let mut inner = state.batches.inner.lock();
        let Some(batch) = inner.batches.get_mut(id) else {
            return no_such_batch(id);
        };
        match batch.object["status"].as_str() {
            Some("cancelling") => {
                batch.object["status"] = json!("cancelled");
                batch.object["cancelled_at"] = json!(now());
                false
            }
            Some("validating" | "in_progress") => {
                batch.object["status"] = json!("in_progress");
                batch.object["in_progress_at"] = json!(now());
                batch.polls_left = batch.polls_left.saturating_sub(1);
                batch.polls_left == 0
            }
            _ => false,
        }
    };
    if due {
        run(state, id).await;
    }
    retrieve_object(state, id)
}

fn retrieve_object(state: &State, id: &str) -> Response<Body> {
    match state.batches.inner.lock().batches.get(id) {
        Some(batch) => json_response(200, batch.object.to_string()),
        None => no_such_batch(id),
    }
}

/// Runs every line through the fake's own handlers and completes the batch.
async fn run(state: &State, id: &str) {
    let lines = match state.batches.inner.lock().batches.get(id) {
        Some(batch) => batch.lines.clone(),
        None => return,
    };
    let (mut output, mut errors) = (String::new(), String::new());
    let (mut completed, mut failed) = (0, 0);
    for line in lines {
        let n = {
            let mut inner = state.batches.inner.lock();
            inner.runs += 1;
            inner.runs
        };
        let body = Bytes::from(line["body"].to_string());
        let response = match (invalid_body(&line), line["url"].as_str()) {
            (Some(refused), _) => refused,
            (None, Some("/v1/chat/completions")) => super::chat::chat(state, n, &body).await,
            (None, Some("/v1/completions")) => super::endpoints::completions(state, n, &body).await,
            (None, Some("/v1/responses")) => super::endpoints::responses(state, n, &body).await,
            (None, Some("/v1/embeddings")) => super::embedding::embeddings(state, &body).await,
            _ => openai_error(400, "fake upstream: unsupported batch url"),
        };
        let status = response.status().as_u16();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        let written = json!({
            "id": hex_id("batch_req_"),
            "custom_id": line["custom_id"],
            "response": {
                "status_code": status,
                "request_id": hex_id("req_"),
                "body": serde_json::from_slice::<Value>(&bytes).unwrap_or(Value::Null),
            },
            "error": null,
        });
        let file = if status == 200 {
            completed += 1;
            &mut output
        } else {
            failed += 1;
            &mut errors
        };
        file.push_str(&written.to_string());
        file.push('\n');
    }
    let done = now();
    let mut inner = state.batches.inner.lock();
    let mut keep = |name: &str, content: String| {
        if content.is_empty() {
            return Value::Null;
        }
        let id = hex_id("file-");
        let object = json!({"id": id, "object": "file", "bytes": content.len(), "created_at": done,
            "filename": name, "purpose": "batch_output", "status": "processed",
            "status_details": null, "expires_at": null});
        inner.file_order.push(id.clone());
        inner
            .files
            .insert(id.clone(), (object, Bytes::from(content)));
        json!(id)
    };
    let output_file = keep("batch_output.jsonl", output);
    let error_file = keep("batch_errors.jsonl", errors);
    if let Some(batch) = inner.batches.get_mut(id) {
        let object = &mut batch.object;
        object["status"] = json!("completed");
        object["output_file_id"] = output_file;
        object["error_file_id"] = error_file;
        for at in ["in_progress_at", "finalizing_at", "completed_at"] {
            if object[at].is_null() {
                object[at] = json!(done);
            }
        }
        object["request_counts"]["completed"] = json!(completed);
        object["request_counts"]["failed"] = json!(failed);
    }
}

/// The API's 400 for a body of the wrong shape (the handlers themselves are lenient).
fn invalid_body(line: &Value) -> Option<Response<Body>> {
    let body = &line["body"];
    if line["url"] == "/v1/chat/completions" && !body["messages"].is_array() {
        let got = match &body["messages"] {
            Value::Null => "null",
            Value::String(_) => "a string",
            Value::Object(_) => "an object",
            _ => "another type",
        };
        let error = json!({"error": {
            "message": format!("Invalid type for 'messages': expected an array of objects, but got {got} instead."),
            "type": "invalid_request_error", "param": "messages", "code": "invalid_type"}});
        return Some(json_response(400, error.to_string()));
    }
    None
}
