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

/// Stores `text` on `replica` (a plain request: a miss, stored).
async fn store(replica: &Replica, text: &str) {
    let response = http_client()
        .post(format!(
            "http://{}/v1/chat/completions",
            replica.process.addr
        ))
        .header("authorization", AUTH)
        .json(&json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-deja-cache"], "miss");
    response.bytes().await.unwrap();
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

/// A `[[keys]]` entry for `secret` with `limits` (TOML lines), and more config (`more`).
fn key_config(id: &str, secret: &str, limits: &str) -> String {
    use sha2::Digest;
    let hash = format!("{:x}", sha2::Sha256::digest(secret.as_bytes()));
    format!("[[keys]]\nid = \"{id}\"\nhash = \"sha256:{hash}\"\n{limits}\n")
}

/// `n` replicas of one Redis, with `extra` config; managed keys need an upstream key.
async fn keyed_replicas(
    fake: &FakeUpstream,
    redis_url: &str,
    n: usize,
    extra: &str,
) -> Vec<Replica> {
    let env = [("DEJA_UPSTREAM__API_KEY", "sk-upstream-real")];
    let mut replicas = Vec::new();
    for _ in 0..n {
        replicas.push(start_replica_with(fake, redis_url, None, extra, &env).await);
    }
    replicas
}

/// (status, JSON body) of a chat call with a deja key.
async fn keyed_chat(replica: &Replica, secret: &str, body: &Value) -> (u16, Value) {
    let response = http_client()
        .post(format!(
            "http://{}/v1/chat/completions",
            replica.process.addr
        ))
        .bearer_auth(secret)
        .json(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Three replicas behind a round-robin balancer refuse a key at its limit, not three times it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_rpm_limit_holds_across_three_replicas() {
    const RPM: usize = 6;
    let redis = RedisServer::start();
    let fake = FakeUpstream::start().await;
    let secret = "sk-deja-team-rpm";
    let keys = key_config("team", secret, &format!("rpm = {RPM}"));
    let replicas = keyed_replicas(&fake, &redis.url(), 3, &keys).await;
    let mut statuses = Vec::new();
    for i in 0..3 * RPM {
        let body = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": format!("rpm {i}")}]});
        statuses.push(keyed_chat(&replicas[i % 3], secret, &body).await.0);
    }
    let admitted = statuses.iter().filter(|s| **s == 200).count();
    assert_eq!(admitted, RPM, "{statuses:?}");
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 429),
        "{statuses:?}"
    );

    // Redis gone: a fresh replica's own count applies (the limit, on that replica alone), and
    // no request fails for it.
    drop(redis);
    let alone = keyed_replicas(&fake, "redis://127.0.0.1:1", 1, &keys).await;
    let mut statuses = Vec::new();
    for i in 0..RPM + 2 {
        let body = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": format!("alone {i}")}]});
        statuses.push(keyed_chat(&alone[0], secret, &body).await.0);
    }
    let admitted = statuses.iter().filter(|s| **s == 200).count();
    assert_eq!(admitted, RPM, "{statuses:?}");
    let metrics = metrics(&alone[0]).await;
    assert!(metrics.contains("deja_redis_up 0"), "{metrics}");
    assert!(
        metrics.contains(&format!("deja_limits_local_fallback_total {}", RPM + 2)),
        "{metrics}"
    );
}

/// Twelve overlapping calls of one key, four on each replica: every reservation is made
/// before any is settled, so the key's tokens per minute admit `tpm / estimate` of them in
/// all (each replica alone would admit that many). Without Redis, the local limit applies.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tpm_limit_holds_across_three_replicas() {
    const TPM: usize = 1000;
    let redis = RedisServer::start();
    let fake = FakeUpstream::start().await;
    fake.set_latency(Duration::from_secs(1));
    let secret = "sk-deja-team-tpm";
    let keys = key_config("team", secret, &format!("tpm = {TPM}"));
    let replicas = keyed_replicas(&fake, &redis.url(), 3, &keys).await;
    let bodies: Vec<Value> = (0..12)
        .map(|i| {
            let content = format!("tokens question {i:02}");
            json!({"model": "gpt-4o-mini", "max_tokens": 200,
                   "messages": [{"role": "user", "content": content}]})
        })
        .collect();
    let estimate = serde_json::to_vec(&bodies[0]).unwrap().len().div_ceil(4) + 200;
    let calls = bodies
        .iter()
        .enumerate()
        .map(|(i, body)| keyed_chat(&replicas[i % 3], secret, body));
    let replies = futures_util::future::join_all(calls).await;
    let statuses: Vec<u16> = replies.iter().map(|(status, _)| *status).collect();
    let admitted = statuses.iter().filter(|s| **s == 200).count();
    assert_eq!(
        admitted,
        TPM / estimate,
        "estimate {estimate}: {statuses:?}"
    );
    for (status, body) in &replies {
        if *status == 429 {
            assert_eq!(body["error"]["type"], "tokens", "{body}");
        }
    }
    assert_eq!(fake.calls(CHAT_PATH), admitted);

    // Redis gone: each replica's own limit applies (said in the metric); nothing fails.
    drop(redis);
    let alone = keyed_replicas(&fake, "redis://127.0.0.1:1", 1, &keys).await;
    let calls = bodies
        .iter()
        .take(6)
        .map(|body| keyed_chat(&alone[0], secret, body));
    let statuses: Vec<u16> = futures_util::future::join_all(calls)
        .await
        .into_iter()
        .map(|(status, _)| status)
        .collect();
    let admitted = statuses.iter().filter(|s| **s == 200).count();
    assert_eq!(admitted, TPM / estimate, "{statuses:?}");
    let metrics = metrics(&alone[0]).await;
    assert!(
        metrics.contains("deja_limits_local_fallback_total 6"),
        "{metrics}"
    );
}

/// A budget across three replicas, round robin: what the admitted calls really cost (settled
/// from their usage) stays within the key's budget, where each replica alone would allow the
/// whole budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_budget_holds_across_three_replicas() {
    const BUDGET: f64 = 100.0;
    let redis = RedisServer::start();
    let fake = FakeUpstream::start().await;
    let secret = "sk-deja-team-budget";
    // A dollar a token keeps the arithmetic readable.
    let config = key_config("team", secret, &format!("budget_usd = {BUDGET}"))
        + "[pricing.\"gpt-4o-mini\"]\ninput_per_mtok = 1000000.0\noutput_per_mtok = 1000000.0\n";
    let replicas = keyed_replicas(&fake, &redis.url(), 3, &config).await;
    let (mut spent, mut admitted, mut refused) = (0.0, 0, 0);
    for i in 0..24 {
        // The estimate (body / 4 + max_tokens) covers the real usage, so reserving it
        // never lets the real spend past the budget.
        let body = json!({"model": "gpt-4o-mini", "max_tokens": 30,
                          "messages": [{"role": "user", "content": format!("budget question {i:02}")}]});
        let (status, answer) = keyed_chat(&replicas[i % 3], secret, &body).await;
        match status {
            200 => {
                admitted += 1;
                let usage = &answer["usage"];
                spent += usage["prompt_tokens"].as_f64().unwrap()
                    + usage["completion_tokens"].as_f64().unwrap();
            }
            429 => {
                refused += 1;
                assert_eq!(answer["error"]["type"], "insufficient_quota", "{answer}");
            }
            other => panic!("status {other}: {answer}"),
        }
    }
    assert!(admitted > 0 && refused > 0, "{admitted} admitted");
    assert!(spent <= BUDGET, "spent {spent} in {admitted} calls");
    // Not refused much earlier either: the next call's estimate did not fit (give or take
    // one settlement still on its way to Redis).
    let probe = json!({"model": "gpt-4o-mini", "max_tokens": 30,
                       "messages": [{"role": "user", "content": "budget question 00"}]});
    let estimate = (serde_json::to_vec(&probe).unwrap().len().div_ceil(4) + 30) as f64;
    assert!(
        spent + 2.0 * estimate > BUDGET,
        "spent {spent} in {admitted} calls"
    );
    assert_eq!(fake.calls(CHAT_PATH), admitted);
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

/// Ten identical requests, spread over three replicas while the first is upstream, make one
/// upstream call: the replica that claimed the miss answers, the others wait for its answer
/// (through the log) and serve it as coalesced.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_identical_requests_on_three_replicas_make_one_upstream_call() {
    let redis = RedisServer::start();
    let fake = FakeUpstream::start().await;
    let replicas = [
        start_replica(&fake, &redis.url(), None).await,
        start_replica(&fake, &redis.url(), None).await,
        start_replica(&fake, &redis.url(), None).await,
    ];
    fake.set_latency(Duration::from_millis(800));
    let text = prompt(&fake, 600);
    let calls = (0..10).map(|i| chat(&replicas[i % 3], &text));
    let answers = futures_util::future::join_all(calls).await;
    assert_eq!(fake.calls(CHAT_PATH), 1, "{answers:#?}");
    let misses = answers.iter().filter(|a| a.cache == "miss").count();
    assert_eq!(misses, 1, "{answers:#?}");
    for answer in &answers {
        assert_eq!((answer.status, &answer.text), (200, &answers[0].text));
        if answer.cache != "miss" {
            assert_eq!(
                (answer.cache.as_str(), answer.matched.as_str()),
                ("hit", "coalesced")
            );
        }
    }
}

/// The replica leading a miss dies mid-call: its lease expires, and one of the replicas
/// waiting on it takes over (one more upstream call), the other waits for that one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_leaders_miss_is_taken_over_by_a_waiting_replica() {
    let redis = RedisServer::start();
    let fake = FakeUpstream::start().await;
    let lease = [("DEJA_REDIS__LEASE_MS", "600")];
    let mut leader = start_replica_with(&fake, &redis.url(), None, "", &lease).await;
    let b = start_replica_with(&fake, &redis.url(), None, "", &lease).await;
    let c = start_replica_with(&fake, &redis.url(), None, "", &lease).await;
    fake.set_latency(Duration::from_secs(2));
    let text = prompt(&fake, 700);
    let first = tokio::spawn({
        let (addr, text) = (leader.process.addr, text.clone());
        async move {
            http_client()
                .post(format!("http://{addr}/v1/chat/completions"))
                .header("authorization", AUTH)
                .json(&json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]}))
                .send()
                .await
        }
    });
    let deadline = Instant::now() + PROPAGATION;
    while fake.calls(CHAT_PATH) == 0 {
        assert!(Instant::now() < deadline, "the leader never went upstream");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let crash = async {
        // B and C are waiting on the leader's lease by then.
        tokio::time::sleep(Duration::from_millis(300)).await;
        leader.process.crash().await;
    };
    let (on_b, on_c, ()) = tokio::join!(chat(&b, &text), chat(&c, &text), crash);
    assert!(
        first.await.unwrap().is_err(),
        "the leader's client lost its answer"
    );
    assert_eq!((on_b.status, on_c.status), (200, 200));
    assert_eq!(on_b.text, on_c.text, "one answer for both");
    assert_eq!(fake.calls(CHAT_PATH), 2);
    let mut caches = [on_b.cache.as_str(), on_c.cache.as_str()];
    caches.sort();
    assert_eq!(caches, ["hit", "miss"]);
    let takeovers = |metrics: &str| metrics.contains("deja_replica_lease_takeovers_total 1");
    assert!(takeovers(&metrics(&b).await) || takeovers(&metrics(&c).await));
}

/// A leader that ends without an answer to store (here `no-store`) gives its lease back at
/// once: a waiting replica goes upstream then, not when the (long) lease would expire.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_without_an_answer_to_store_releases_its_waiters() {
    let redis = RedisServer::start();
    let fake = FakeUpstream::start().await;
    let lease = [("DEJA_REDIS__LEASE_MS", "120000")];
    let a = start_replica_with(&fake, &redis.url(), None, "", &lease).await;
    let b = start_replica_with(&fake, &redis.url(), None, "", &lease).await;
    fake.set_latency(Duration::from_millis(800));
    let text = prompt(&fake, 800);
    let waiting = async {
        let deadline = Instant::now() + PROPAGATION;
        while fake.calls(CHAT_PATH) == 0 {
            assert!(Instant::now() < deadline, "the leader never went upstream");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        chat(&b, &text).await
    };
    let both = async { tokio::join!(ask(&a, &text), waiting) };
    let (on_a, on_b) = tokio::time::timeout(Duration::from_secs(30), both)
        .await
        .expect("the waiting replica was released before the lease expired");
    assert_eq!((on_a.0, on_a.1.as_str()), (200, "miss"));
    assert_eq!((on_b.status, on_b.cache.as_str()), (200, "miss"));
    assert_eq!(fake.calls(CHAT_PATH), 2);
    assert!(
        metrics(&b)
            .await
            .contains("deja_replica_lease_takeovers_total 1")
    );
}

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
