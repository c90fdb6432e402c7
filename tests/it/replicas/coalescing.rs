//! Identical misses on several replicas make one upstream call (leases in Redis).

use super::*;

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
    // Long enough that the new leader's renewals (every third of it) stay in time on a busy
    // machine: at 600 ms a late renewal let the third replica take over as well.
    let lease = [("DEJA_REDIS__LEASE_MS", "1500")];
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
