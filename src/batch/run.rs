//! A batch's life: created from the caller's input file (cached lines answered, the rest sent
//! in one upstream batch), refreshed from the upstream batch when polled, merged when that
//! batch ends, cancelled on request.

use std::sync::Arc;

use bytes::Bytes;
use http::HeaderMap;
use serde_json::{Value, json};

use super::BatchMetrics;
use super::charge::{self, Used};
use super::lines::{self, Asker, Sorted};
use super::merge::{self, CANCELLED, EXPIRED, Unfinished};
use super::record::{Batch, Status, UpstreamBatch, WINDOW_SECS};
use super::upstream::{self, CallError};
use super::{BATCH_PREFIX, Batches, Kept, StoreError};
use crate::app::App;
use crate::error::ApiError;

/// The create call's fields, read and checked.
pub struct Create {
    pub input_file_id: String,
    pub endpoint: String,
    pub completion_window: String,
    pub metadata: Value,
}

/// Why a call could not be answered with a batch.
pub enum RunError {
    Upstream(CallError),
    Store(StoreError),
    /// The input file is larger than deja reads into memory (`server.max_body_bytes`): the
    /// create call is relayed, and the batch is the upstream's own.
    TooLarge,
    /// The caller's managed key cannot cover the lines to send (429, or 403 unpriced).
    Refused(ApiError),
}

impl From<CallError> for RunError {
    fn from(error: CallError) -> Self {
        RunError::Upstream(error)
    }
}

impl From<StoreError> for RunError {
    fn from(error: StoreError) -> Self {
        RunError::Store(error)
    }
}

/// Creates a batch: reads the input file, sorts its lines, sends what the cache could not
/// answer, and keeps the batch. With nothing to send it is complete at once.
pub async fn create(
    store: &Arc<Batches>,
    asker: &Asker<'_>,
    tenant: String,
    request: Create,
) -> Result<Batch, RunError> {
    let app = asker.app;
    let limit = asker.snapshot.config.server.max_body_bytes as u64;
    let size = upstream::file_size(app, asker.headers, &request.input_file_id).await?;
    if size.is_some_and(|bytes| bytes > limit) {
        return Err(RunError::TooLarge);
    }
    let content = upstream::file_content(app, asker.headers, &request.input_file_id).await?;
    if content.len() as u64 > limit {
        return Err(RunError::TooLarge);
    }
    let now = app.now_ms() / 1000;
    let seq = store.blocking(|s| s.next_seq()).await?;
    let mut batch = Batch {
        id: format!("{BATCH_PREFIX}{:032x}", fastrand::u128(..)),
        tenant,
        cache_owner: asker.partition.clone(),
        seq,
        endpoint: request.endpoint,
        input_file_id: request.input_file_id,
        completion_window: request.completion_window,
        metadata: request.metadata,
        model: None,
        status: Status::InProgress,
        errors: None,
        created_at: now,
        in_progress_at: None,
        expires_at: Some(now + WINDOW_SECS),
        finalizing_at: None,
        completed_at: None,
        failed_at: None,
        expired_at: None,
        cancelling_at: None,
        cancelled_at: None,
        output_file_id: None,
        error_file_id: None,
        completed: 0,
        failed: 0,
        lines: Vec::new(),
        upstream: None,
    };
    match lines::sort(asker, &content).await {
        Err(errors) => batch.fail(now, errors),
        Ok(sorted) => {
            let charge = match asker.key {
                Some(key) => {
                    let config = &asker.snapshot.config;
                    charge::reserve(app, config, key, &sorted.spend)
                        .await
                        .map_err(RunError::Refused)?
                }
                None => None,
            };
            count(&store.metrics, &sorted);
            let Sorted {
                lines,
                jsonl,
                model,
                ..
            } = sorted;
            batch.lines = lines;
            batch.model = model;
            batch.in_progress_at = Some(now);
            if jsonl.is_empty() {
                finish(
                    app,
                    store,
                    &mut batch,
                    &Default::default(),
                    Status::Completed,
                )
                .await?;
            } else {
                let (file, made) = match send(app, asker.headers, &batch, jsonl).await {
                    Ok(sent) => sent,
                    Err(err) => {
                        charge::release(app, charge);
                        return Err(err);
                    }
                };
                let id = made["id"].as_str().unwrap_or_default().to_string();
                batch.upstream = Some(UpstreamBatch {
                    id,
                    input_file_id: file,
                });
                store.hold(&batch.id, charge);
                follow(app, store, asker.headers, &mut batch, &made).await?;
            }
        }
    }
    store.metrics.created.inc();
    let saved = batch.clone();
    store.blocking(move |s| s.save(&saved)).await?;
    Ok(batch)
}

/// Uploads the lines to send and makes the upstream batch: its input file id and Batch object.
async fn send(
    app: &App,
    headers: &HeaderMap,
    batch: &Batch,
    jsonl: Vec<u8>,
) -> Result<(String, Value), RunError> {
    let file = upstream::upload(app, headers, Bytes::from(jsonl)).await?;
    let mut body = json!({
        "input_file_id": file,
        "endpoint": batch.endpoint,
        "completion_window": batch.completion_window,
    });
    if batch.metadata.is_object() {
        body["metadata"] = batch.metadata.clone();
    }
    let made = upstream::create_batch(app, headers, &body).await?;
    Ok((file, made))
}

fn count(metrics: &BatchMetrics, sorted: &Sorted) {
    metrics.lines("cached", sorted.cached);
    metrics.lines("deduplicated", sorted.repeated);
    metrics.lines("upstream", sorted.sent);
}

/// The batch as it is now: an unfinished one asks its upstream batch (with the poller's
/// credentials) and, when that has ended, is merged. An upstream that cannot be asked
/// leaves the batch as it was.
pub async fn refresh(
    app: &Arc<App>,
    store: &Arc<Batches>,
    headers: &HeaderMap,
    mut batch: Batch,
) -> Result<Batch, StoreError> {
    let Some(up) = batch.upstream.clone() else {
        return Ok(batch);
    };
    if batch.status.finished() {
        return Ok(batch);
    }
    let _one_at_a_time = store.refreshing(&batch.id).await;
    // Another poll may have merged it while this one waited.
    batch = latest(app, store, batch).await?;
    if batch.status.finished() {
        return Ok(batch);
    }
    let before = batch.status;
    match upstream::get_batch(app, headers, &up.id).await {
        Ok(seen) => match follow(app, store, headers, &mut batch, &seen).await {
            Ok(()) => {}
            Err(RunError::Store(err)) => return Err(err),
            Err(RunError::TooLarge | RunError::Refused(_)) => {}
            Err(RunError::Upstream(err)) => {
                tracing::warn!(batch = %batch.id, error = ?err, "upstream batch files unreadable; polled again later");
            }
        },
        Err(err) => {
            tracing::warn!(batch = %batch.id, error = ?err, "upstream batch unreadable; status unchanged");
        }
    }
    if batch.status != before || batch.status.finished() {
        let saved = batch.clone();
        store.blocking(move |s| s.save(&saved)).await?;
    }
    Ok(batch)
}

/// Follows the upstream batch's status; when it has ended, downloads its files and merges.
async fn follow(
    app: &Arc<App>,
    store: &Arc<Batches>,
    headers: &HeaderMap,
    batch: &mut Batch,
    seen: &Value,
) -> Result<(), RunError> {
    let now = app.now_ms() / 1000;
    let status = seen["status"].as_str().and_then(Status::parse);
    let (status, unfinished) = match status {
        None | Some(Status::Validating | Status::InProgress) => return Ok(()),
        Some(Status::Finalizing) => {
            batch.status = Status::Finalizing;
            batch.finalizing_at.get_or_insert(now);
            return Ok(());
        }
        Some(Status::Cancelling) => {
            batch.status = Status::Cancelling;
            batch.cancelling_at.get_or_insert(now);
            return Ok(());
        }
        Some(Status::Failed) => {
            let errors = seen["errors"]["data"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            batch.fail(now, errors);
            store.settle(app, &batch.id, Used::default());
            return Ok(());
        }
        Some(Status::Completed) => (Status::Completed, &EXPIRED),
        Some(Status::Expired) => (Status::Expired, &EXPIRED),
        Some(Status::Cancelled) => (Status::Cancelled, &CANCELLED),
    };
    let mut files = Vec::new();
    for field in ["output_file_id", "error_file_id"] {
        if let Some(id) = seen[field].as_str() {
            files.push(upstream::file_content(app, headers, id).await?);
        }
    }
    let slices: Vec<&[u8]> = files.iter().map(|f| f.as_ref()).collect();
    let results = merge::by_custom_id(&slices);
    finish(
        app,
        store,
        batch,
        &Finished {
            results,
            unfinished,
        },
        status,
    )
    .await
}

/// What the upstream batch left: its lines by `custom_id`, and what the missing ones get.
pub struct Finished {
    results: std::collections::HashMap<String, Value>,
    unfinished: &'static Unfinished,
}

impl Default for Finished {
    fn default() -> Self {
        Finished {
            results: Default::default(),
            unfinished: &EXPIRED,
        }
    }
}

/// Merges, keeps the files, and ends the batch with `status`.
async fn finish(
    app: &Arc<App>,
    store: &Arc<Batches>,
    batch: &mut Batch,
    finished: &Finished,
    status: Status,
) -> Result<(), RunError> {
    let merged = merge::merge(app, batch, &finished.results, finished.unfinished).await;
    store.settle(app, &batch.id, merged.used);
    tracing::debug!(batch = %batch.id, to_cache = merged.to_cache, "batch merged");
    let now = app.now_ms() / 1000;
    let (tenant, kept) = (batch.tenant.clone(), Kept::now(app));
    let (output, errors) = (merged.output, merged.errors);
    let (output_file, error_file) = store
        .blocking(move |s| {
            let keep = |name: &str, content: &[u8]| match content.is_empty() {
                true => Ok(None),
                false => s.put_file(&tenant, name, content, kept).map(Some),
            };
            Ok((
                keep("batch_output.jsonl", &output)?,
                keep("batch_errors.jsonl", &errors)?,
            ))
        })
        .await?;
    batch.output_file_id = output_file.and_then(|f| f["id"].as_str().map(str::to_string));
    batch.error_file_id = error_file.and_then(|f| f["id"].as_str().map(str::to_string));
    batch.completed = merged.completed;
    batch.failed = merged.failed;
    batch.status = status;
    batch.finalizing_at.get_or_insert(now);
    match status {
        Status::Expired => batch.expired_at = Some(now),
        Status::Cancelled => batch.cancelled_at = Some(now),
        _ => batch.completed_at = Some(now),
    }
    Ok(())
}

/// Cancels an unfinished batch: its upstream batch is cancelled and it is `cancelling` until
/// a poll sees that end. `Ok(None)`: the batch has already ended (OpenAI's 409).
pub async fn cancel(
    app: &Arc<App>,
    store: &Arc<Batches>,
    headers: &HeaderMap,
    mut batch: Batch,
) -> Result<Option<Batch>, RunError> {
    let Some(up) = batch.upstream.clone() else {
        return Ok(None);
    };
    // Cancelling may merge too: not beside a refresh of the same batch.
    let _one_at_a_time = store.refreshing(&batch.id).await;
    batch = latest(app, store, batch).await?;
    if batch.status.finished() {
        return Ok(None);
    }
    let seen = upstream::cancel_batch(app, headers, &up.id).await?;
    let now = app.now_ms() / 1000;
    batch.status = Status::Cancelling;
    batch.cancelling_at.get_or_insert(now);
    follow(app, store, headers, &mut batch, &seen).await?;
    let saved = batch.clone();
    store.blocking(move |s| s.save(&saved)).await?;
    Ok(Some(batch))
}

/// The batch as stored now (another poll may have changed it while the caller waited for
/// its refresh lock); `batch` itself if it is gone.
async fn latest(app: &Arc<App>, store: &Arc<Batches>, batch: Batch) -> Result<Batch, StoreError> {
    let (id, kept) = (batch.id.clone(), Kept::now(app));
    Ok(store
        .blocking(move |s| s.load(&id, kept))
        .await?
        .unwrap_or(batch))
}
