//! The job queue shared by replicas (`[redis]`, `src/jobs/redis_store.rs`): real deja
//! binaries on one real `redis-server`. A job submitted to one replica is run by whichever
//! replica's worker takes it and is readable and cancellable from every replica; a replica
//! killed with jobs in hand has them taken over by another; tenants stay apart everywhere;
//! Redis gone makes a submission fail at once with a 503, never hang. And on both queues
//! (sled and Redis), a key over its own limit waits in the queue rather than failing.

use std::time::{Duration, Instant};

use crate::support::admin::metric;
use crate::support::fake_upstream::{CHAT_PATH, FakeUpstream, deterministic_answer, http_client};
use crate::support::process::{DejaProcess, write_config};
use crate::support::redis_server::RedisServer;
use crate::support::webhook_receiver::{SECRET, WebhookReceiver};
use futures_util::StreamExt;
use serde_json::{Value, json};

const KEY_A: &str = "sk-tenant-a";
const KEY_B: &str = "sk-tenant-b";
const ADMIN_TOKEN: &str = "admin-secret-jobs-redis";
/// How long a job may take to finish before a test fails.
const PATIENCE: Duration = Duration::from_secs(60);

struct Replica {
    process: DejaProcess,
    admin: String,
    _dir: tempfile::TempDir,
}

impl Replica {
    async fn start(fake: &FakeUpstream, redis: &RedisServer, jobs: &str) -> Replica {
        let redis = format!(
            "[redis]\nurl = \"{}\"\ntimeout_ms = 300\nconnect_timeout_ms = 300\n",
            redis.url()
        );
        Replica::launch(fake, &redis, jobs, &[]).await
    }

    /// A deja with `more` config (sections), `[jobs]` lines `jobs`, and `env`.
    async fn launch(fake: &FakeUpstream, more: &str, jobs: &str, env: &[(&str, &str)]) -> Replica {
        let dir = tempfile::tempdir().unwrap();
        let extra = format!("\n{more}\n[admin]\nlisten = \"127.0.0.1:0\"\n\n[jobs]\n{jobs}\n");
        let config = write_config(dir.path(), &fake.base_url(), "info", &extra);
        let mut env = env.to_vec();
        env.push(("DEJA_ADMIN__TOKEN", ADMIN_TOKEN));
        let mut process = DejaProcess::start_with_env(&config, &env).await;
        let line = process.wait_for_log("admin listening").await;
        let addr = line["fields"]["addr"].as_str().unwrap();
        let addr = addr.trim_start_matches("Some(").trim_end_matches(')');
        Replica {
            admin: format!("http://{addr}"),
            process,
            _dir: dir,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.process.addr)
    }

    async fn submit(&self, key: &str, text: &str) -> reqwest::Response {
        http_client()
            .post(self.url("/v1/async/chat/completions"))
            .bearer_auth(key)
            .json(&json!({"model": "gpt-4o-mini",
                "messages": [{"role": "user", "content": text}]}))
            .send()
            .await
            .expect("submission answered")
    }

    /// Submits and returns the job id (202 expected).
    async fn submitted(&self, key: &str, text: &str) -> String {
        let response = self.submit(key, text).await;
        assert_eq!(response.status(), 202);
        let job: Value = response.json().await.unwrap();
        job["id"].as_str().unwrap().to_string()
    }

    async fn poll(&self, key: &str, id: &str) -> (u16, Value) {
        let response = http_client()
            .get(self.url(&format!("/v1/async/jobs/{id}")))
            .bearer_auth(key)
            .send()
            .await
            .expect("poll answered");
        let status = response.status().as_u16();
        (status, response.json().await.expect("JSON"))
    }

    async fn cancel(&self, key: &str, id: &str) -> (u16, Value) {
        let response = http_client()
            .delete(self.url(&format!("/v1/async/jobs/{id}")))
            .bearer_auth(key)
            .send()
            .await
            .expect("cancel answered");
        let status = response.status().as_u16();
        (status, response.json().await.expect("JSON"))
    }

    /// Polls until the job has finished.
    async fn finished(&self, key: &str, id: &str) -> Value {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let (status, job) = self.poll(key, id).await;
            assert_eq!(status, 200, "{job}");
            if !matches!(job["status"].as_str(), Some("queued" | "running")) {
                return job;
            }
            assert!(Instant::now() < deadline, "job {id} did not finish: {job}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Jobs this replica's workers finished, by status.
    async fn finished_here(&self, status: &str) -> f64 {
        let text = http_client()
            .get(format!("{}/metrics", self.admin))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        metric(
            &text,
            &format!("deja_jobs_finished_total{{status=\"{status}\"}}"),
        )
    }
}

fn question(i: usize) -> String {
    format!("queued question number {i}")
}

#[tokio::test]
async fn a_job_submitted_to_one_replica_runs_anywhere_and_is_read_from_another() {
    let redis = RedisServer::start();
    let fake = FakeUpstream::start().await;
    fake.set_deterministic(true);
    fake.set_latency(Duration::from_millis(150));
    let a = Replica::start(&fake, &redis, "concurrency = 2").await;
    let b = Replica::start(&fake, &redis, "concurrency = 2").await;

    const JOBS: usize = 24;
    let mut ids = Vec::new();
    for i in 0..JOBS {
        ids.push(a.submitted(KEY_A, &question(i)).await);
    }
    for (i, id) in ids.iter().enumerate() {
        let job = b.finished(KEY_A, id).await;
        assert_eq!(job["status"], "succeeded", "{job}");
        assert_eq!(
            job["response"]["body"]["choices"][0]["message"]["content"],
            deterministic_answer(&question(i)),
            "job {i} has its own answer, read from the other replica"
        );
        assert_eq!(
            a.poll(KEY_A, id).await.1,
            job,
            "both replicas see one record"
        );
    }
    // Every job ran once, and both replicas' workers took some.
    assert_eq!(fake.calls(CHAT_PATH), JOBS);
    let (on_a, on_b) = (
        a.finished_here("succeeded").await,
        b.finished_here("succeeded").await,
    );
    eprintln!("jobs run: {on_a} on the replica they were submitted to, {on_b} on the other");
    assert_eq!(on_a + on_b, JOBS as f64);
    assert!(on_b >= 1.0, "the other replica's workers take jobs too");

    // A job queued through one replica is cancelled through the other and never runs.
    fake.set_latency(Duration::from_millis(1500));
    let mut busy = Vec::new();
    for i in 0..4 {
        busy.push(a.submitted(KEY_A, &format!("slow question {i}")).await);
    }
    let waiting = a.submitted(KEY_A, "a question that is cancelled").await;
    let (status, job) = b.cancel(KEY_A, &waiting).await;
    assert_eq!(status, 200, "{job}");
    assert_eq!(job["status"], "cancelled");
    assert_eq!(a.poll(KEY_A, &waiting).await.1["status"], "cancelled");
    for id in &busy {
        assert_eq!(a.finished(KEY_A, id).await["status"], "succeeded");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let asked: Vec<String> = fake
        .requests()
        .iter()
        .filter(|r| r.path == CHAT_PATH)
        .map(|r| String::from_utf8_lossy(&r.body).into_owned())
        .collect();
    assert!(
        !asked.iter().any(|body| body.contains("cancelled")),
        "a cancelled job never runs"
    );
    let (status, _) = a.cancel(KEY_A, &busy[0]).await;
    assert_eq!(status, 409, "a finished job is not cancelled");
}

#[tokio::test]
async fn a_killed_replica_s_jobs_are_taken_over_and_finished() {
    let redis = RedisServer::start();
    let fake = FakeUpstream::start().await;
    fake.set_deterministic(true);
    fake.set_latency(Duration::from_millis(1500));
    let jobs = "concurrency = 4\nclaim_idle_ms = 1000";
    let mut a = Replica::start(&fake, &redis, jobs).await;

    const JOBS: usize = 10;
    let ids: Vec<String> = futures_util::stream::iter(0..JOBS)
        .map(|i| {
            let a = &a;
            async move { a.submitted(KEY_A, &question(i)).await }
        })
        .buffered(4)
        .collect()
        .await;
    // Replica A has taken jobs and its calls are in flight: kill it mid-call.
    let deadline = Instant::now() + PATIENCE;
    while fake.calls(CHAT_PATH) < 4 {
        assert!(Instant::now() < deadline, "A's workers never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    a.process.crash().await;
    let before = fake.calls(CHAT_PATH);
    assert!(before < JOBS, "killed before the queue drained ({before})");

    let mut b = Replica::start(&fake, &redis, jobs).await;
    fake.set_latency(Duration::from_millis(50));
    for (i, id) in ids.iter().enumerate() {
        let job = b.finished(KEY_A, id).await;
        assert_eq!(job["status"], "succeeded", "{job}");
        assert_eq!(
            job["response"]["body"]["choices"][0]["message"]["content"],
            deterministic_answer(&question(i)),
            "job {i} finished with its own answer"
        );
    }
    // The jobs A held running were taken over (run again: at least once), not lost.
    let line = b
        .process
        .wait_for_log("job taken over from a replica that stopped")
        .await;
    assert!(line["fields"]["runs"].as_u64() >= Some(2), "{line}");
    let calls = fake.calls(CHAT_PATH);
    eprintln!("{JOBS} jobs; upstream calls {before} before the kill, {calls} in all");
    assert!((JOBS..=JOBS + 4).contains(&calls), "{calls}");
    assert_eq!(b.finished_here("succeeded").await, JOBS as f64);
}

#[tokio::test]
async fn a_replica_stopped_gracefully_hands_its_jobs_over_at_once() {
    let redis = RedisServer::start();
    let fake = FakeUpstream::start().await;
    fake.set_deterministic(true);
    fake.set_latency(Duration::from_millis(1000));
    // Far longer than the test may take: only the hand-over can pass the jobs on in time.
    let jobs = "concurrency = 2\nclaim_idle_ms = 120000";
    let mut a = Replica::start(&fake, &redis, jobs).await;
    let ids = [
        a.submitted(KEY_A, &question(1)).await,
        a.submitted(KEY_A, &question(2)).await,
    ];
    let deadline = Instant::now() + PATIENCE;
    while fake.calls(CHAT_PATH) < 2 {
        assert!(Instant::now() < deadline, "A's workers never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pid = a.process.pid().to_string();
    let term = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status();
    assert!(term.expect("run kill").success());
    a.process
        .wait_for_log("jobs held here handed to the other replicas")
        .await;

    let b = Replica::start(&fake, &redis, jobs).await;
    for (i, id) in ids.iter().enumerate() {
        let job = b.finished(KEY_A, id).await;
        assert_eq!(job["status"], "succeeded", "{job}");
        assert_eq!(
            job["response"]["body"]["choices"][0]["message"]["content"],
            deterministic_answer(&question(i + 1))
        );
    }
}

#[tokio::test]
async fn a_webhook_a_killed_replica_owed_is_delivered_by_another() {
    let redis = RedisServer::start();
    let fake = FakeUpstream::start().await;
    // The first attempt is refused; the replica that made it waits long before the next.
    let receiver = WebhookReceiver::start(1).await;
    let hook = receiver.url("/hooks/deja");
    let jobs = |backoff_ms: u64| {
        format!(
            "concurrency = 1\nclaim_idle_ms = 1000\ncallback_allow = [\"{}\"]\n\
             webhook_secret = \"{SECRET}\"\nwebhook_initial_backoff_ms = {backoff_ms}\n",
            receiver.url("/hooks")
        )
    };
    let mut a = Replica::start(&fake, &redis, &jobs(60_000)).await;
    let response = http_client()
        .post(a.url("/v1/async/chat/completions"))
        .bearer_auth(KEY_A)
        .header("x-deja-callback-url", &hook)
        .json(&json!({"model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": "call me back"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let id = response.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    // Killed once the refused attempt is recorded, while it waits to try again.
    let deadline = Instant::now() + PATIENCE;
    while a.poll(KEY_A, &id).await.1["webhook"]["attempts"] == json!([]) {
        assert!(Instant::now() < deadline, "no attempt recorded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    a.process.crash().await;

    let b = Replica::start(&fake, &redis, &jobs(50)).await;
    let deliveries = receiver.wait_for(2).await;
    assert!(deliveries.iter().all(|d| d.signed && d.id == id));
    assert_eq!(deliveries[0].body, deliveries[1].body, "the same event");
    let deadline = Instant::now() + PATIENCE;
    let job = loop {
        let (status, job) = b.poll(KEY_A, &id).await;
        assert_eq!(status, 200);
        if job["webhook"]["delivered"] == true {
            break job;
        }
        assert!(Instant::now() < deadline, "delivery not recorded: {job}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let codes: Vec<u64> = job["webhook"]["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|attempt| attempt["status_code"].as_u64().unwrap())
        .collect();
    assert_eq!(codes, [500, 204], "{job}");
    assert_eq!(job["status"], "succeeded");
    assert_eq!(fake.calls(CHAT_PATH), 1, "the job itself did not run again");
}

#[tokio::test]
async fn a_live_replica_keeps_the_jobs_it_runs_longer_than_the_claim_idle_time() {
    let redis = RedisServer::start();
    let fake = FakeUpstream::start().await;
    fake.set_latency(Duration::from_millis(2500));
    let jobs = "concurrency = 2\nclaim_idle_ms = 600";
    let a = Replica::start(&fake, &redis, jobs).await;
    let b = Replica::start(&fake, &redis, jobs).await;
    let ids = [
        a.submitted(KEY_A, "a long question").await,
        a.submitted(KEY_A, "another long question").await,
    ];
    for id in &ids {
        assert_eq!(b.finished(KEY_A, id).await["status"], "succeeded");
    }
    // Each job ran once: the replica running it renewed its claim, so none was taken over.
    let runs = a.finished_here("succeeded").await + b.finished_here("succeeded").await;
    assert_eq!(runs, 2.0);
    assert!(
        !a.process.output().contains("job taken over")
            && !b.process.output().contains("job taken over")
    );
}

#[tokio::test]
async fn another_tenants_job_id_is_a_404_on_every_replica() {
    let redis = RedisServer::start();
    let fake = FakeUpstream::start().await;
    let a = Replica::start(&fake, &redis, "concurrency = 1").await;
    let b = Replica::start(&fake, &redis, "concurrency = 1").await;
    let id = a.submitted(KEY_A, "a private question").await;
    for replica in [&a, &b] {
        let (status, body) = replica.poll(KEY_B, &id).await;
        assert_eq!(status, 404, "{body}");
        assert_eq!(body["error"]["code"], "job_not_found");
        assert_eq!(replica.cancel(KEY_B, &id).await.0, 404);
        assert_eq!(replica.poll(KEY_A, "job_unknown").await.0, 404);
    }
    for replica in [&a, &b] {
        assert_eq!(replica.finished(KEY_A, &id).await["status"], "succeeded");
    }
}

#[tokio::test]
async fn without_redis_a_submission_fails_at_once_and_works_again_after() {
    let mut redis = RedisServer::start();
    let fake = FakeUpstream::start().await;
    let a = Replica::start(&fake, &redis, "concurrency = 1").await;
    let id = a.submitted(KEY_A, "asked before the outage").await;
    a.finished(KEY_A, &id).await;

    redis.kill();
    let started = Instant::now();
    let response = a.submit(KEY_A, "asked during the outage").await;
    let took = started.elapsed();
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "job_store_unavailable", "{body}");
    assert!(body["error"]["message"].is_string());
    assert!(took < Duration::from_secs(3), "answered in {took:?}");
    assert_eq!(a.poll(KEY_A, &id).await.0, 503);

    // Redis back (empty: it kept nothing): the queue is made again and jobs run.
    redis.restart();
    let deadline = Instant::now() + PATIENCE;
    let id = loop {
        let response = a.submit(KEY_A, "asked after the outage").await;
        if response.status() == 202 {
            let job: Value = response.json().await.unwrap();
            break job["id"].as_str().unwrap().to_string();
        }
        assert!(Instant::now() < deadline, "submissions never worked again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(a.finished(KEY_A, &id).await["status"], "succeeded");
}

/// A managed key over its own requests-per-minute limit: its jobs wait in the queue for the
/// limit to allow them (deja's own 429 puts them back with its wait), so every one succeeds,
/// none reaches the upstream refused, and they finish spread over the limit's refills.
async fn a_key_over_its_own_limit_waits_in_the_queue(redis: Option<&RedisServer>) {
    const RPM: usize = 30; // a burst of 30, then one every 2 s
    const JOBS: usize = RPM + 3;
    const SECRET_KEY: &str = "sk-deja-limited-team";
    let fake = FakeUpstream::start().await;
    let hash = {
        use sha2::Digest;
        format!("{:x}", sha2::Sha256::digest(SECRET_KEY.as_bytes()))
    };
    let mut more = format!("[[keys]]\nid = \"team\"\nhash = \"sha256:{hash}\"\nrpm = {RPM}\n");
    if let Some(redis) = redis {
        more.push_str(&format!("\n[redis]\nurl = \"{}\"\n", redis.url()));
    }
    let env = [("DEJA_UPSTREAM__API_KEY", "sk-upstream-real")];
    let deja = Replica::launch(&fake, &more, "concurrency = 4", &env).await;
    let mut ids = Vec::new();
    for i in 0..JOBS {
        ids.push(deja.submitted(SECRET_KEY, &question(i)).await);
    }
    let mut finished_at = Vec::new();
    for id in &ids {
        let job = deja.finished(SECRET_KEY, id).await;
        assert_eq!(job["status"], "succeeded", "{job}");
        assert_eq!(job["response"]["status_code"], 200, "{job}");
        finished_at.push(job["finished_at"].as_u64().unwrap());
    }
    assert_eq!(
        fake.calls(CHAT_PATH),
        JOBS,
        "no call went upstream to be refused"
    );
    assert_eq!(deja.finished_here("succeeded").await, JOBS as f64);
    assert_eq!(deja.finished_here("failed").await, 0.0);
    // The three over the burst waited for refills, 2 s apart (seconds are whole, hence -1).
    let spread = finished_at.iter().max().unwrap() - finished_at.iter().min().unwrap();
    eprintln!("{JOBS} jobs at rpm {RPM}: finished over {spread} s");
    assert!(spread >= 3 * 60 / RPM as u64 - 1, "spread {spread} s");
}

#[tokio::test]
async fn a_key_over_its_own_limit_waits_in_the_local_queue() {
    a_key_over_its_own_limit_waits_in_the_queue(None).await;
}

#[tokio::test]
async fn a_key_over_its_own_limit_waits_in_the_shared_queue() {
    let redis = RedisServer::start();
    a_key_over_its_own_limit_waits_in_the_queue(Some(&redis)).await;
}
