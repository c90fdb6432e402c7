//! deja: a drop-in caching reverse proxy for OpenAI-compatible APIs.
//!
//! Module map:
//! - `config`: `proxy.toml` + `DEJA_*` env vars, validation
//! - `server`: listener, connection handling, graceful shutdown, background sweeps
//! - `connection`: one client connection: deadlines for its first request and for idleness
//! - `router`: which handler serves a path; `request_path`: which paths are accepted
//! - `relay`: faithful streaming relay of any `/v1/*` request
//! - `tunnel`: WebSocket upgrades (Realtime API) tunnelled to the upstream
//! - `upstream`: the outgoing HTTP client, header hygiene, 502/504 mapping
//! - `retry`: when and how long to wait before retrying an upstream call
//! - `routing`: model aliases and fallbacks
//! - `cached`: the flow of a cached endpoint (lookup, coalesce, forward, store); `hit` renders answers, `miss` forwards and stores, `memo` remembers the plans of repeated bodies
//! - `chat`: chat-completions specifics (scope fields, stream assembly and replay)
//! - `completions`: the same for legacy `/v1/completions`
//! - `chunks`: what the `[DONE]`-terminated chunk streams of both share
//! - `responses`: the same for `/v1/responses` (typed event streams, stateful bypasses)
//! - `control`: per-request cache controls and tenant isolation
//! - `embeddings`: per-input exact cache of `/v1/embeddings` (partial batches)
//! - `coalesce`: one upstream call for identical concurrent requests
//! - `cache`: keys, entries, sled store, per-scope vector index, TTL sweeps
//! - `embed`: prompt → unit vector (OpenAI-compatible embeddings API)
//! - `sse`: Server-Sent Events parsing and writing
//! - `error`: deja's own errors as OpenAI-shaped responses
//! - `jobs`: the persistent job queue (`/v1/async/...`): workers, polling, signed webhooks
//! - `admin`: the admin listener (probes, /metrics, cache administration, reload)
//! - `dashboard`: the admin listener's page: live totals, histograms, recent lookups, threshold replay
//! - `keys`, `limits`: managed mode (deja keys, per-key rate limits and budgets)
//! - `track`, `usage`, `metrics`: one record per request → usage log and Prometheus metrics
//! - `metering`: the real usage of an upstream answer, read as it passes (limits, billing)
//! - `bench`: `deja bench quality`, hit rate and wrong hits on labelled paraphrase pairs
//! - `json_splice`: replacing one top-level field of stored JSON text (fresh ids on hits)
//! - `lazy_replay`: streamed hits rendered event by event as the client reads
//! - `body`, `clock`, `app`, `telemetry`, `text`: plumbing

// Production code answers errors, it never panics on them (tests may unwrap freely).
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::todo,
        clippy::unimplemented
    )
)]
pub mod admin;
pub mod app;
pub mod bench;
pub mod body;
pub mod cache;
pub mod cached;
pub mod chat;
pub mod chunks;
pub mod clock;
pub mod coalesce;
pub mod completions;
pub mod config;
pub mod connection;
pub mod control;
pub mod dashboard;
pub mod embed;
pub mod embeddings;
pub mod error;
pub mod headers;
pub mod jobs;
pub mod json_budget;
pub mod json_splice;
pub mod keys;
pub mod lazy_replay;
pub mod limits;
pub mod metering;
pub mod metrics;
pub mod relay;
#[cfg(test)]
mod replay_reference;
pub mod replica;
pub mod request_path;
pub mod responses;
pub mod retry;
pub mod router;
pub mod routing;
pub mod server;
pub mod sse;
pub mod telemetry;
pub mod text;
pub mod track;
pub mod trust;
pub mod tunnel;
pub mod upstream;
pub mod usage;
pub mod write_deadline;
