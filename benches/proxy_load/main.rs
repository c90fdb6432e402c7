//! Load on the whole proxy, over loopback HTTP/1.1:
//!
//! 1. Hit path: exact cache hits against a bare hyper server that answers every POST with the
//!    same bytes from memory (the baseline), closed loop at concurrency 1, 16 and 64.
//! 2. Miss path: the latency deja adds in front of a fake upstream (fixed latency 0 and 50 ms),
//!    every request a miss (cache on, semantic tier off), open loop at a fixed rate; and the
//!    time to first byte of a streamed miss; then what that added time is made of, probed
//!    under the same background load through deja and straight to the upstream
//!    (`proxy_load/stream.rs`, `--only=stream`).
//!
//! `cargo bench --bench proxy_load -- [--quick] [--profile[=C]] [--profile-stream[=RATE]] [--only=hit|miss|stream|semantic]`. Prints markdown tables; each
//! figure for deja has its baseline measured in the same run, interleaved (A B B A) so a drift
//! of the shared machine affects both alike. `--quick` shortens every cell; `--profile[=C]`
//! runs only deja's exact hits at concurrency C (default 16) for 15 s, to run under a profiler. Timing targets are
//! reported, never asserted; only correctness (status 200, `x-deja-cache`) is asserted.
//!
//! Everything listens on 127.0.0.1 only; every server is stopped and both runtimes are shut
//! down before the process exits.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, Uri, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::runtime::Runtime;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use deja::clock::SystemClock;
use deja::config::Config;
use deja::server::RunningServer;

mod closed_loop;
mod cpu;
mod open_loop;
mod relay;
mod requests;
mod semantic;
mod servers;
mod stream;

use closed_loop::*;
use cpu::*;
use open_loop::*;
use requests::*;
use servers::*;

pub(crate) const CHAT_PATH: &str = "/v1/chat/completions";
pub(crate) const CONCURRENCY: [usize; 3] = [1, 16, 64];
/// Fixed rate of the open-loop miss runs.
pub(crate) const MISS_RATE: f64 = 1000.0;
/// Latencies of the fake upstream for the miss runs.
pub(crate) const UPSTREAM_LATENCY_MS: [u64; 2] = [0, 50];
/// The fake upstream's stream: this many chunks, this far apart, then `data: [DONE]`.
pub(crate) const STREAM_CHUNKS: usize = 20;
pub(crate) const STREAM_GAP: Duration = Duration::from_millis(5);
pub(crate) const TARGET_HIT_RATIO: f64 = 0.60;
pub(crate) const TARGET_P99_US: f64 = 1000.0;
pub(crate) const AUTHORIZATION: &str = "Bearer sk-bench-tenant";

pub(crate) type Body = UnsyncBoxBody<Bytes, Infallible>;
pub(crate) type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// Cell durations.
#[derive(Clone, Copy)]
pub(crate) struct Plan {
    /// Measured time per cell (split over its two interleaved blocks).
    measure: Duration,
    /// Warm-up before each block (new connections, pools, caches).
    warmup: Duration,
}

fn main() {
    let started = Instant::now();
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let profile = args.iter().find_map(|a| match a.strip_prefix("--profile") {
        Some(rest) if rest.starts_with("-stream") => None,
        Some("") => Some(16),
        Some(c) => c.strip_prefix('=')?.parse::<usize>().ok(),
        None => None,
    });
    let plan = if quick {
        Plan {
            measure: Duration::from_secs(2),
            warmup: Duration::from_millis(250),
        }
    } else {
        Plan {
            measure: Duration::from_secs(5),
            warmup: Duration::from_millis(500),
        }
    };
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());

    print_header(&args, cores, quick, plan);

    // Servers (bare, fake upstream, deja) and the load generator get a runtime each, so the
    // CPU time of each side can be told apart; they still share the same cores.
    let servers_rt = runtime("bench-srv", cores);
    let load_rt = runtime("bench-gen", cores);
    // `--upstream-runtime`: the fake upstream on a runtime of its own, as a remote upstream
    // would be, instead of queueing its tasks on deja's workers (the cores stay shared).
    let upstream_rt = args
        .iter()
        .any(|a| a == "--upstream-runtime")
        .then(|| runtime("bench-up", cores));

    let servers = servers_rt.block_on(Servers::start(
        upstream_rt.as_ref().map(|rt| rt.handle().clone()),
    ));
    println!(
        "deja hit body: {} bytes (captured from a real hit at start-up; the bare server returns \
         these bytes).\n",
        servers.hit_body.len()
    );

    // `--profile-stream[=RATE]`: streams only, for a profiler (`stream::profile_streams`).
    let profile_stream = args
        .iter()
        .find_map(|a| match a.strip_prefix("--profile-stream") {
            Some("") => Some(500.0),
            Some(rate) => rate.strip_prefix('=')?.parse::<f64>().ok(),
            None => None,
        });
    if let Some(rate) = profile_stream {
        load_rt.block_on(stream::profile_streams(&servers, rate));
    } else if let Some(concurrency) = profile {
        load_rt.block_on(profile_hits(&servers, concurrency));
    } else {
        // `--only=hit|miss|stream|semantic` runs one section.
        let only = args.iter().find_map(|a| a.strip_prefix("--only="));
        let runs = |section: &str| only.is_none_or(|only| only == section);
        if runs("hit") {
            load_rt.block_on(hit_section(&servers, plan));
        }
        if runs("miss") {
            load_rt.block_on(miss_section(&servers, plan));
        }
        if runs("stream") {
            load_rt.block_on(stream::stream_section(&servers, plan));
        }
        if runs("semantic") {
            load_rt.block_on(semantic::semantic_section(&servers, plan));
        }
    }

    servers_rt.block_on(servers.stop());
    load_rt.shutdown_timeout(Duration::from_secs(5));
    servers_rt.shutdown_timeout(Duration::from_secs(5));
    if let Some(upstream_rt) = upstream_rt {
        upstream_rt.shutdown_timeout(Duration::from_secs(5));
    }
    println!(
        "\nwhole run: {:.0} s; load average at the end: {}; every server stopped, runtimes \
         shut down.",
        started.elapsed().as_secs_f64(),
        load_average()
    );
}

pub(crate) fn runtime(name: &str, workers: usize) -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .thread_name(name)
        // Blocking-pool threads stay for the whole run, so their CPU time stays countable.
        .thread_keep_alive(Duration::from_secs(3600))
        .enable_all()
        .build()
        .expect("tokio runtime")
}

pub(crate) fn print_header(args: &[String], cores: usize, quick: bool, plan: Plan) {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let load = load_average();
    let extra: Vec<&str> = args
        .iter()
        .skip(1)
        .map(String::as_str)
        .filter(|a| *a != "--bench")
        .collect();
    let command = if extra.is_empty() {
        "cargo bench --bench proxy_load".to_string()
    } else {
        format!("cargo bench --bench proxy_load -- {}", extra.join(" "))
    };
    println!("# deja proxy load\n");
    println!("- date: {}", utc_now());
    println!("- command: `{command}`");
    println!("- machine: {cores} CPUs (nproc), {model}; load average at start: {load}");
    println!(
        "- mode: {}; {:.1} s measured per cell in two interleaved blocks (A B B A), each after \
         {:.2} s of warm-up",
        if quick { "--quick" } else { "full" },
        plan.measure.as_secs_f64(),
        plan.warmup.as_secs_f64()
    );
    println!(
        "- the load generator runs in this process and shares the {cores} cores with the \
         servers (own tokio runtime, {cores} workers; servers' runtime: {cores} workers, like \
         deja's `#[tokio::main]`). Its CPU share is shown, and how many cores the process kept \
         busy (below {cores} means idle time or other processes on the machine); the \
         servers' CPU time per request is the steadier figure on a shared machine."
    );
    println!(
        "- deja runs in-process: no tracing subscriber (so no per-request log line), semantic \
         tier off, sled store in a temp dir, HTTP/1.1 keep-alive, loopback only.\n"
    );
}

pub(crate) fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// `YYYY-MM-DD HH:MM:SS UTC` without a date crate (civil-from-days, H. Hinnant).
pub(crate) fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}
