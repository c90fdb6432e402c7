//! Managed keys' limits held across replicas through Redis: rpm, tpm, budget.

use super::*;

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
