//! `[redis]` replication, measured in one run against a real `redis-server` (on PATH):
//! - propagation lag: from the end of a miss answered on replica A to the moment replica B
//!   holds the entry (B's store is polled in-process, every 50 µs; one HTTP probe then
//!   confirms it is a hit), p50/p99 over `N` prompts;
//! - the exact-hit path: sequential exact hits on a replica with `[redis]` against one
//!   without, in alternating rounds (ratio; hits never touch Redis, so ≈ 1.0 is expected);
//! - the added latency of an rpm limit checked in Redis (a managed key's exact hit);
//! - the added latency of a tpm limit checked (reserved, then settled) in Redis: misses of a
//!   managed key with tpm against the same key's twin without limits, on a replica with
//!   `[redis]`, and the tpm key on a replica without (a miss with `[redis]` also claims its
//!   lease for cross-replica coalescing);
//! - the time for a fresh replica to join a cluster of `JOIN` entries (default 20,000).
//!
//! `cargo bench --bench replication -- [N] [JOIN]` (default 500). Writes
//! `benches/results/replication.md`.

#[allow(dead_code)] // the bench uses a few of its calls
#[path = "../tests/it/support/fake_upstream.rs"]
mod fake_upstream;

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use deja::clock::SystemClock;
use deja::config::{Config, RedisConfig};
use deja::server::{RunningServer, start};
use fake_upstream::{FakeUpstream, http_client};
use serde_json::json;

const HIT_ROUNDS: usize = 5;
const LIMITED_KEY: &str = "sk-deja-bench-limited";
const TPM_KEY: &str = "sk-deja-bench-tpm";
const FREE_KEY: &str = "sk-deja-bench-free";
const HITS_PER_ROUND: usize = 2000;
const MISSES_PER_ROUND: usize = 500;

struct Redis(Child);

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn redis(dir: &std::path::Path) -> (Redis, u16) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server on PATH (scripts/test.sh installs it)");
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "redis-server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    (Redis(child), port)
}

async fn replica(fake: &FakeUpstream, dir: &std::path::Path, redis: Option<u16>) -> RunningServer {
    replica_with(fake, dir, redis, false).await
}

/// `managed`: keys with limits no run reaches, so every request takes the limit's path
/// without being refused: `LIMITED_KEY` (rpm), `TPM_KEY` (tpm), and `FREE_KEY` (none).
async fn replica_with(
    fake: &FakeUpstream,
    dir: &std::path::Path,
    redis: Option<u16>,
    managed: bool,
) -> RunningServer {
    let mut config = Config::default();
    if managed {
        let mut key = deja::config::KeyConfig::unlimited("bench", LIMITED_KEY);
        key.rpm = 100_000_000;
        let mut tpm = deja::config::KeyConfig::unlimited("bench-tpm", TPM_KEY);
        tpm.tpm = 1_000_000_000_000;
        let free = deja::config::KeyConfig::unlimited("bench-free", FREE_KEY);
        config.keys = vec![key, tpm, free];
        config.upstream.api_key = Some(deja::config::Secret::new("sk-upstream-bench"));
    }
    config.server.listen = "127.0.0.1:0".parse().unwrap();
    config.upstream.base_url = fake.base_url();
    config.cache.dir = dir.to_path_buf();
    config.cache.semantic = false;
    config.redis = redis.map(|port| RedisConfig {
        url: format!("redis://127.0.0.1:{port}"),
        ..RedisConfig::default()
    });
    start(config, Arc::new(SystemClock))
        .await
        .expect("replica starts")
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(500);
    let dirs: Vec<_> = (0..7).map(|_| tempfile::tempdir().unwrap()).collect();
    let (_redis, port) = redis(dirs[0].path());
    let fake = FakeUpstream::start().await;
    let a = replica(&fake, dirs[1].path(), Some(port)).await;
    let b = replica(&fake, dirs[2].path(), Some(port)).await;
    let alone = replica(&fake, dirs[3].path(), None).await;
    let client = http_client();
    let ask = |addr: std::net::SocketAddr, text: String, store: bool| {
        let client = client.clone();
        async move {
            let mut request = client
                .post(format!("http://{addr}/v1/chat/completions"))
                .bearer_auth("sk-bench-replication")
                .json(&json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]}));
            if !store {
                request = request.header("cache-control", "no-store");
            }
            let response = request.send().await.expect("answered");
            let cache = response.headers()["x-deja-cache"]
                .to_str()
                .unwrap()
                .to_string();
            response.bytes().await.expect("body");
            cache
        }
    };
    let b_cache = b.app.cache.clone().expect("cache");

    // Propagation lag.
    let mut lags = Vec::with_capacity(n);
    for i in 0..n {
        let text = format!("replication bench prompt {i}");
        let before = b_cache.entries();
        assert_eq!(ask(a.addr, text.clone(), true).await, "miss");
        let answered = Instant::now();
        while b_cache.entries() == before {
            assert!(
                answered.elapsed() < Duration::from_secs(10),
                "not replicated"
            );
            tokio::time::sleep(Duration::from_micros(50)).await;
        }
        lags.push(answered.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(ask(b.addr, text.clone(), false).await, "hit");
        // The replica without Redis gets the same entries, so both stores are alike below.
        ask(alone.addr, text, true).await;
    }
    lags.sort_by(f64::total_cmp);
    let (p50, p99, max) = (
        percentile(&lags, 0.5),
        percentile(&lags, 0.99),
        lags[lags.len() - 1],
    );
    println!("propagation lag over {n} prompts: p50 {p50:.2} ms, p99 {p99:.2} ms, max {max:.2} ms");

    // Exact hits: with [redis] (A) against without (alone), alternating rounds.
    let text = "replication bench hit".to_string();
    for addr in [a.addr, alone.addr] {
        ask(addr, text.clone(), true).await;
        assert_eq!(ask(addr, text.clone(), true).await, "hit");
    }
    let mut rates = [Vec::new(), Vec::new()];
    for _ in 0..HIT_ROUNDS {
        for (slot, addr) in [a.addr, alone.addr].into_iter().enumerate() {
            let started = Instant::now();
            for _ in 0..HITS_PER_ROUND {
                ask(addr, text.clone(), true).await;
            }
            rates[slot].push(HITS_PER_ROUND as f64 / started.elapsed().as_secs_f64());
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (with, without) = (median(&mut rates[0]), median(&mut rates[1]));
    println!(
        "exact hits, one client: {with:.0}/s with [redis], {without:.0}/s without (ratio {:.3})",
        with / without
    );
    // The added latency of a Redis-checked rpm limit: exact hits of a managed key on a
    // replica with [redis] against one without, alternating rounds.
    let lim_redis = replica_with(&fake, dirs[4].path(), Some(port), true).await;
    let lim_local = replica_with(&fake, dirs[5].path(), None, true).await;
    let limited = |addr: std::net::SocketAddr| {
        let client = client.clone();
        async move {
            let response = client
                .post(format!("http://{addr}/v1/chat/completions"))
                .bearer_auth(LIMITED_KEY)
                .json(&json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "limited"}]}))
                .send()
                .await
                .expect("answered");
            assert_eq!(response.status(), 200);
            response.bytes().await.expect("body");
        }
    };
    let mut micros = [Vec::new(), Vec::new()];
    for _ in 0..HIT_ROUNDS {
        for (slot, addr) in [lim_redis.addr, lim_local.addr].into_iter().enumerate() {
            limited(addr).await;
            let started = Instant::now();
            for _ in 0..HITS_PER_ROUND {
                limited(addr).await;
            }
            micros[slot].push(started.elapsed().as_secs_f64() * 1e6 / HITS_PER_ROUND as f64);
        }
    }
    let (checked, local) = (median(&mut micros[0]), median(&mut micros[1]));
    println!(
        "managed-key hit: {checked:.0} µs with the rpm limit in Redis, {local:.0} µs local (+{:.0} µs)",
        checked - local
    );

    // The added latency of a Redis-checked tpm limit: misses (`no-store`, so each goes
    // upstream) of the tpm key and of the key without limits on the [redis] replica, and of
    // the tpm key on the replica without.
    let miss = |addr: std::net::SocketAddr, key: &'static str| {
        let client = client.clone();
        async move {
            let response = client
                .post(format!("http://{addr}/v1/chat/completions"))
                .bearer_auth(key)
                .header("cache-control", "no-store")
                .json(&json!({"model": "gpt-4o-mini", "max_tokens": 16,
                              "messages": [{"role": "user", "content": "tokens"}]}))
                .send()
                .await
                .expect("answered");
            assert_eq!(response.status(), 200);
            response.bytes().await.expect("body");
        }
    };
    let runs = [
        (lim_redis.addr, TPM_KEY),
        (lim_redis.addr, FREE_KEY),
        (lim_local.addr, TPM_KEY),
    ];
    // Interleaved one by one, each timed alone: the median of each is robust to the bursts
    // of a shared machine.
    let mut miss_micros = [Vec::new(), Vec::new(), Vec::new()];
    for (addr, key) in runs {
        miss(addr, key).await;
    }
    for _ in 0..HIT_ROUNDS * MISSES_PER_ROUND {
        for (slot, (addr, key)) in runs.into_iter().enumerate() {
            let started = Instant::now();
            miss(addr, key).await;
            miss_micros[slot].push(started.elapsed().as_secs_f64() * 1e6);
        }
    }
    let [tpm_redis, free_redis, tpm_local] = miss_micros.map(|mut v| median(&mut v));
    println!(
        "managed-key miss: {tpm_redis:.0} µs with tpm in Redis, {free_redis:.0} µs without limits (+{:.0} µs), {tpm_local:.0} µs with tpm without Redis",
        tpm_redis - free_redis
    );

    // Joining: entries published by A (second argument, default 20,000), then a fresh
    // replica starts; it loads them before `start` returns.
    let join_n: usize = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .nth(1)
        .unwrap_or(20_000);
    let a_cache = a.app.cache.clone().expect("cache");
    let replica_a = a.app.replica.get().expect("replica").clone();
    let published =
        |r: &deja::replica::Replica| r.stats.published.load(std::sync::atomic::Ordering::Relaxed);
    let target = published(&replica_a) + join_n as u64;
    tokio::task::spawn_blocking(move || {
        for i in 0..join_n {
            let hash = |tag: &str| {
                deja::cache::key::Hash32(*blake3::hash(format!("{tag} {i}").as_bytes()).as_bytes())
            };
            a_cache
                .insert(deja::cache::NewEntry {
                    scope: hash("scope"),
                    exact: hash("exact"),
                    model: "gpt-4o-mini".into(),
                    response: format!(
                        "{{\"id\":\"chatcmpl-{i}\",\"object\":\"chat.completion\",\"choices\":[]}}"
                    ),
                    has_usage: true,
                    vector: None,
                    prompt: None,
                    owner: Default::default(),
                })
                .expect("insert");
        }
    })
    .await
    .expect("inserts");
    let deadline = Instant::now() + Duration::from_secs(600);
    while published(&replica_a) < target {
        assert!(Instant::now() < deadline, "not all published");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let started = Instant::now();
    let joined = replica(&fake, dirs[6].path(), Some(port)).await;
    let join_secs = started.elapsed().as_secs_f64();
    let held = joined.app.cache.as_ref().expect("cache").entries();
    println!("joining a cluster of {held} entries: {join_secs:.2} s");

    let profile = if cfg!(debug_assertions) {
        "dev (unoptimised)"
    } else {
        "release"
    };
    let report = format!(
        "# Replication through Redis\n\n`cargo bench [--profile dev] --bench replication -- {n} {join_n}`, {profile} build, \
         redis-server {}, two replicas and Redis on one machine.\n\n\
         | measure | value |\n|---|---|\n\
         | propagation lag p50 (end of a miss on A → entry on B) | {p50:.2} ms |\n\
         | propagation lag p99 | {p99:.2} ms |\n\
         | propagation lag max | {max:.2} ms |\n\
         | exact hits/s, one client, with `[redis]` | {with:.0} |\n\
         | exact hits/s, one client, without | {without:.0} |\n\
         | ratio | {:.3} |\n\
         | managed-key hit with the rpm limit checked in Redis | {checked:.0} µs |\n\
         | the same without Redis | {local:.0} µs |\n\
         | managed-key miss with the tpm limit reserved and settled in Redis | {tpm_redis:.0} µs |\n\
         | the same key without limits, same replica | {free_redis:.0} µs |\n\
         | the tpm key on a replica without Redis | {tpm_local:.0} µs |\n\
         | joining a cluster of {held} entries (start → listening) | {join_secs:.2} s |\n",
        redis_version(),
        with / without
    );
    std::fs::create_dir_all("benches/results").ok();
    std::fs::write("benches/results/replication.md", report).expect("write results");
}

fn redis_version() -> String {
    Command::new("redis-server")
        .arg("--version")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .nth(2)
                .unwrap_or("?")
                .to_string()
        })
        .unwrap_or_else(|_| "?".into())
}
