//! deja: a drop-in caching reverse proxy for OpenAI-compatible APIs.
//!
//! The architecture, one folder per layer, from where a request enters to what every layer shares:
//! - `server`: start-up: builds the state and the services above it, the listeners, the job
//!   workers, graceful shutdown
//! - `edge`: connections, accepted path spellings, which handler a path goes to, WebSocket
//!   tunnels
//! - `flow`: the flow of a cached endpoint (plan, decide, act, report), request controls and
//!   tenants, model aliases and fallbacks (`models`)
//! - `track`: what every request goes through whatever its endpoint: admission against a
//!   managed key's limits, the tracker that settles it, metering of real usage
//! - `endpoints`: what each cached endpoint keys on and how it replays a stored answer (chat,
//!   responses, legacy completions, the embeddings cache), and the plain relay of the rest
//! - `replay`: what replays share: id splicing, lazily rendered streamed hits, chunk streams
//! - `upstream`: the outgoing client and its retries, an upstream response streamed on as ours
//! - `cache`: the storage tier (keys, entries, sled store, per-scope vector index, TTL,
//!   verification of semantic candidates, identical requests in flight); knows nothing of
//!   HTTP or of the flow
//! - `embed`: prompt → unit vector (OpenAI-compatible embeddings API or a local model)
//! - `managed`: deja keys, per-key limits and budgets
//! - `trust`: shadow verification, the wrong-hit estimate, the error budget, feedback
//! - `replica`: several replicas sharing one cache through Redis
//! - `jobs`: the persistent job queue (`/v1/async/...`)
//! - `ops`: the admin listener and the dashboard
//! - `observe`: one record per request (`usage::Record`), the usage log, metrics, log lines,
//!   the dashboard's records (`board`)
//! - `config`: `proxy.toml` + `DEJA_*` env vars, validation; `bench`: `deja bench ...`
//! - `wire`: what every layer reads and writes: the response body type, SSE, the `x-deja-*`
//!   header names, JSON body cost
//! - `app`, `clock`, `error`: the state every handler shares (and the plan memo), time,
//!   OpenAI-shaped errors (with why a managed key was refused)
//!
//! No folder imports one that imports it back; `App` holds only what lies below it (README
//! "Layout").

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
pub mod app;
pub mod batch;
pub mod bench;
pub mod cache;
pub mod clock;
pub mod config;
pub mod edge;
pub mod embed;
pub mod endpoints;
pub mod error;
pub mod flow;
pub mod jobs;
pub mod managed;
pub mod observe;
pub mod ops;
pub mod replay;
pub mod replica;
pub mod server;
pub mod track;
pub mod trust;
pub mod upstream;
pub mod wire;
