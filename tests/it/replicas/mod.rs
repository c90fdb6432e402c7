//! Several replicas of the real binary sharing one cache through a real `redis-server`
//! (`[redis]`, `src/replica/`): a miss on one is a hit on the others, deletes reach every
//! replica, a late or restarted replica catches up before it serves, and Redis going away
//! never fails a request.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::fake_upstream::{CHAT_PATH, FakeUpstream, http_client};
use crate::support::process::{DejaProcess, write_config};
use crate::support::redis_server::RedisServer;
use serde_json::{Value, json};

const AUTH: &str = "Bearer sk-test-replicas";
const ADMIN_TOKEN: &str = "admin-secret-replicas";
const DIM: usize = crate::support::fake_upstream::EMBED_DIM;
/// How long replication may take before a test fails (it takes milliseconds).
const PROPAGATION: Duration = Duration::from_secs(10);

struct Replica {
    process: DejaProcess,
    admin: String,
    _dir: tempfile::TempDir,
}

/// A vector per prompt, and its paraphrase's (cosine about 0.99).
fn vectors(seed: u64) -> (Vec<f32>, Vec<f32>) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let unit = |rng: &mut fastrand::Rng| {
        let v: Vec<f32> = (0..DIM).map(|_| rng.f32() - 0.5).collect();
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.into_iter().map(|x| x / norm).collect::<Vec<f32>>()
    };
    let v = unit(&mut rng);
    let noise = unit(&mut rng);
    let near: Vec<f32> = v.iter().zip(&noise).map(|(a, b)| a + 0.1 * b).collect();
    let norm = near.iter().map(|x| x * x).sum::<f32>().sqrt();
    (v, near.into_iter().map(|x| x / norm).collect())
}

fn prompt(fake: &FakeUpstream, n: u64) -> String {
    let text = format!("question {n}: what is stored in the shared cache?");
    let (v, near) = vectors(n);
    fake.set_embedding(&text, v);
    fake.set_embedding(&format!("{text} (reworded)"), near);
    text
}

async fn start_replica(
    fake: &FakeUpstream,
    redis_url: &str,
    dir: Option<tempfile::TempDir>,
) -> Replica {
    start_replica_with(fake, redis_url, dir, "", &[]).await
}

/// `start_replica` with more config (`extra`, appended) and environment.
async fn start_replica_with(
    fake: &FakeUpstream,
    redis_url: &str,
    dir: Option<tempfile::TempDir>,
    extra: &str,
    env: &[(&str, &str)],
) -> Replica {
    let dir = dir.unwrap_or_else(|| tempfile::tempdir().unwrap());
    let config = config(dir.path(), fake, redis_url, extra);
    let mut env = env.to_vec();
    env.push(("DEJA_ADMIN__TOKEN", ADMIN_TOKEN));
    let mut process = DejaProcess::start_with_env(&config, &env).await;
    let line = process.wait_for_log("admin listening").await;
    let addr = line["fields"]["addr"].as_str().unwrap().to_string();
    let addr = addr
        .trim_start_matches("Some(")
        .trim_end_matches(')')
        .to_string();
    Replica {
        process,
        admin: format!("http://{addr}"),
        _dir: dir,
    }
}

fn config(dir: &Path, fake: &FakeUpstream, redis_url: &str, more: &str) -> std::path::PathBuf {
    let extra = format!(
        "\n[redis]\nurl = \"{redis_url}\"\ntimeout_ms = 200\nconnect_timeout_ms = 300\n\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\n{more}\n"
    );
    write_config(dir, &fake.base_url(), "info", &extra)
}

/// (status, x-deja-cache, x-deja-match) of one chat request. `no-store` keeps a probe
/// from storing its own answer, so a hit can only come from replication.
async fn ask(replica: &Replica, text: &str) -> (u16, String, String) {
    let response = http_client()
        .post(format!(
            "http://{}/v1/chat/completions",
            replica.process.addr
        ))
        .header("authorization", AUTH)
        .header("cache-control", "no-store")
        .json(&json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]}))
        .send()
        .await
        .expect("request answered");
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let (cache, matched) = (header("x-deja-cache"), header("x-deja-match"));
    let status = response.status().as_u16();
    let body: Value = response.json().await.expect("JSON answer");
    assert!(
        body["choices"][0]["message"]["content"].is_string(),
        "{body}"
    );
    (status, cache, matched)
}

/// One answer to a plain chat request (stored when a miss).
#[derive(Debug)]
struct Answer {
    status: u16,
    /// `x-deja-cache` and `x-deja-match`.
    cache: String,
    matched: String,
    text: String,
}

async fn chat(replica: &Replica, text: &str) -> Answer {
    let response = http_client()
        .post(format!(
            "http://{}/v1/chat/completions",
            replica.process.addr
        ))
        .header("authorization", AUTH)
        .json(&json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]}))
        .send()
        .await
        .expect("request answered");
    let header = |name: &str| {
        let value = response.headers().get(name).and_then(|v| v.to_str().ok());
        value.unwrap_or("").to_string()
    };
    let (status, cache, matched) = (
        response.status().as_u16(),
        header("x-deja-cache"),
        header("x-deja-match"),
    );
    let body: Value = response.json().await.expect("JSON answer");
    let text = body["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or("")
        .to_string();
    Answer {
        status,
        cache,
        matched,
        text,
    }
}

/// Stores `text` on `replica` (a plain request: a miss, stored).
async fn store(replica: &Replica, text: &str) {
    let answer = chat(replica, text).await;
    assert_eq!((answer.status, answer.cache.as_str()), (200, "miss"));
}

/// Asks until the answer is `want` ("hit" or "miss") or `PROPAGATION` has passed.
/// The replica's `/metrics` exposition.
async fn metrics(replica: &Replica) -> String {
    http_client()
        .get(format!("{}/metrics", replica.admin))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

async fn until(replica: &Replica, text: &str, want: &str) -> (String, String) {
    let deadline = Instant::now() + PROPAGATION;
    loop {
        let (status, cache, matched) = ask(replica, text).await;
        assert_eq!(status, 200);
        if cache == want || Instant::now() > deadline {
            return (cache, matched);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_miss_on_one_replica_is_an_exact_and_a_semantic_hit_on_the_others() {
    let redis = RedisServer::start();
    let fake = FakeUpstream::start().await;
    let a = start_replica(&fake, &redis.url(), None).await;
    let b = start_replica(&fake, &redis.url(), None).await;
    let c = start_replica(&fake, &redis.url(), None).await;
    let text = prompt(&fake, 1);
    store(&a, &text).await;
    for other in [&b, &c] {
        // The entry may land between a lookup's exact and semantic steps (a semantic hit at
        // similarity 1); once it has landed, the same text is an exact hit.
        assert_eq!(until(other, &text, "hit").await.0, "hit");
        let (status, cache, matched) = ask(other, &text).await;
        assert_eq!(
            (status, cache.as_str(), matched.as_str()),
            (200, "hit", "exact")
        );
        let reworded = format!("{text} (reworded)");
        assert_eq!(
            until(other, &reworded, "hit").await,
            ("hit".into(), "semantic".into())
        );
    }
    // B's and C's probes were not stored, and nothing went upstream twice for A's answer.
    let metrics = metrics(&b).await;
    assert!(metrics.contains("deja_redis_up 1"), "{metrics}");
    assert!(
        metrics.contains("deja_replica_applied_total 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_purge_or_delete_on_one_replica_stops_the_entry_on_all() {
    let redis = RedisServer::start();
    let fake = FakeUpstream::start().await;
    let a = start_replica(&fake, &redis.url(), None).await;
    let b = start_replica(&fake, &redis.url(), None).await;
    let c = start_replica(&fake, &redis.url(), None).await;
    let (first, second, own) = (prompt(&fake, 10), prompt(&fake, 11), prompt(&fake, 12));
    // C stores one of its own first, so its store's counter is ahead of A's.
    store(&c, &own).await;
    store(&a, &first).await;
    store(&a, &second).await;
    for other in [&b, &c] {
        assert_eq!(until(other, &first, "hit").await.0, "hit");
        assert_eq!(until(other, &second, "hit").await.0, "hit");
    }
    // An entry has one id on every replica: the one A gave it.
    let mut ids = Vec::new();
    for replica in [&a, &b, &c] {
        let hit = http_client()
            .post(format!(
                "http://{}/v1/chat/completions",
                replica.process.addr
            ))
            .header("authorization", AUTH)
            .json(
                &json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": first}]}),
            )
            .send()
            .await
            .unwrap();
        ids.push(hit.headers()["x-deja-entry"].to_str().unwrap().to_string());
    }
    assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
    // A delete by that id through C's admin API.
    let id = &ids[0];
    let deleted = http_client()
        .delete(format!("{}/admin/entries/{id}", c.admin))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 200);
    for replica in [&a, &b, &c] {
        assert_eq!(until(replica, &first, "miss").await.0, "miss");
        assert_eq!(
            ask(replica, &second).await.1,
            "hit",
            "only the deleted one went"
        );
        assert_eq!(ask(replica, &own).await.1, "hit");
    }
    // A purge of everything through C's admin API.
    let purged = http_client()
        .post(format!("{}/admin/purge", c.admin))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"all": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(purged.status(), 200);
    for replica in [&a, &b, &c] {
        assert_eq!(until(replica, &second, "miss").await.0, "miss");
    }
    // A replica joining afterwards does not bring the purged entries back.
    let d = start_replica(&fake, &redis.url(), None).await;
    assert_eq!(ask(&d, &first).await.1, "miss");
    assert_eq!(ask(&d, &second).await.1, "miss");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn late_and_restarted_replicas_catch_up_before_they_serve() {
    let redis = RedisServer::start();
    let fake = FakeUpstream::start().await;
    let a = start_replica(&fake, &redis.url(), None).await;
    let mut b = start_replica(&fake, &redis.url(), None).await;
    let early: Vec<String> = (100..120).map(|n| prompt(&fake, n)).collect();
    for text in &early {
        store(&a, text).await;
    }
    // A fresh replica: every live entry is there when it starts listening (no polling).
    let fresh = start_replica(&fake, &redis.url(), None).await;
    for text in &early {
        assert_eq!(ask(&fresh, text).await.1, "hit", "{text}");
    }
    // B is killed, A keeps storing, B restarts on its own store and replays what it missed.
    until(&b, &early[19], "hit").await;
    b.process.crash().await;
    let later: Vec<String> = (200..220).map(|n| prompt(&fake, n)).collect();
    for text in &later {
        store(&a, text).await;
    }
    let dir = std::mem::replace(&mut b._dir, tempfile::tempdir().unwrap());
    drop(b);
    let b = start_replica(&fake, &redis.url(), Some(dir)).await;
    for text in early.iter().chain(&later) {
        assert_eq!(ask(&b, text).await.1, "hit", "{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_going_away_fails_no_request_and_replicas_converge_when_it_returns() {
    let mut redis = RedisServer::start();
    let fake = FakeUpstream::start().await;
    let a = start_replica(&fake, &redis.url(), None).await;
    let b = start_replica(&fake, &redis.url(), None).await;
    let before = prompt(&fake, 300);
    store(&a, &before).await;
    assert_eq!(until(&b, &before, "hit").await.0, "hit");

    redis.kill();
    // Every request is still answered: hits from the local store, misses from upstream.
    let during: Vec<String> = (301..311).map(|n| prompt(&fake, n)).collect();
    for text in &during {
        store(&a, text).await;
        assert_eq!(ask(&a, text).await.1, "hit");
        assert_eq!(ask(&b, &before).await.1, "hit");
        assert_eq!(ask(&b, text).await.0, 200);
    }

    // Redis is back, empty: A publishes what it stored meanwhile, and B gets it.
    redis.restart();
    for text in &during {
        assert_eq!(until(&b, text, "hit").await.0, "hit", "{text}");
    }
    let after = prompt(&fake, 320);
    store(&b, &after).await;
    assert_eq!(until(&a, &after, "hit").await.0, "hit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_whose_redis_is_down_at_start_serves_alone() {
    let mut redis = RedisServer::start();
    let url = redis.url();
    redis.kill();
    let fake = FakeUpstream::start().await;
    let a = start_replica(&fake, &url, None).await;
    let text = prompt(&fake, 400);
    store(&a, &text).await;
    assert_eq!(ask(&a, &text).await.1, "hit");
}

mod coalescing;
mod limits;

/// A replica away while the log was trimmed past its position reloads the entries instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_whose_position_was_trimmed_away_reloads_the_entries() {
    let redis = RedisServer::start();
    let fake = FakeUpstream::start().await;
    let a = start_replica(&fake, &redis.url(), None).await;
    let mut b = start_replica(&fake, &redis.url(), None).await;
    let first = prompt(&fake, 500);
    store(&a, &first).await;
    assert_eq!(until(&b, &first, "hit").await.0, "hit");
    b.process.crash().await;
    let later: Vec<String> = (501..506).map(|n| prompt(&fake, n)).collect();
    for text in &later {
        store(&a, text).await;
    }
    // Every event B has not seen is gone from the log (the entries stay in Redis).
    let trimmed = std::process::Command::new("redis-cli")
        .args([
            "-p",
            &redis.port.to_string(),
            "XTRIM",
            "deja:log",
            "MAXLEN",
            "0",
        ])
        .output()
        .expect("redis-cli (installed with redis-server)");
    assert!(trimmed.status.success());
    let dir = std::mem::replace(&mut b._dir, tempfile::tempdir().unwrap());
    drop(b);
    let b = start_replica(&fake, &redis.url(), Some(dir)).await;
    for text in std::iter::once(&first).chain(&later) {
        assert_eq!(ask(&b, text).await.1, "hit", "{text}");
    }
    let metrics = metrics(&b).await;
    assert!(
        metrics.contains("deja_replica_resyncs_total 1"),
        "{metrics}"
    );
}
