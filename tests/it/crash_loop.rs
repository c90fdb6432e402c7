//! Crash loop: the real binary under concurrent storing load is SIGKILLed at a random moment,
//! restarted on the same directory, and checked, many times over:
//! - the store opens, and every entry it holds has its vector in the index (entries = indexed);
//! - every hit is byte-identical to what the upstream sent for that prompt (the fake answers
//!   each prompt deterministically), so nothing half-written or mixed up is served;
//! - the index agrees with the store: a paraphrase embedded next to a stored prompt finds that
//!   prompt's own entry.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::support::fake_upstream::{EMBED_DIM, FakeUpstream, deterministic_answer, http_client};
use crate::support::process::{DejaProcess, write_config};
use parking_lot::Mutex;
use serde_json::{Value, json};

const RUNS: usize = 15;
/// Clients storing at once.
const WORKERS: usize = 8;
const AUTH: &str = "Bearer sk-test-crash-loop";

/// A random unit vector: random 64-d vectors are far apart (cosine rarely above 0.5), so each
/// prompt's neighbourhood is its own.
fn random_unit(rng: &mut fastrand::Rng) -> Vec<f32> {
    let mut v: Vec<f32> = (0..EMBED_DIM).map(|_| rng.f32() - 0.5).collect();
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter_mut().for_each(|x| *x /= norm);
    v
}

/// `v` moved slightly towards a random direction: cosine about 0.99.
fn nudged(v: &[f32], rng: &mut fastrand::Rng) -> Vec<f32> {
    let noise = random_unit(rng);
    let mut out: Vec<f32> = v.iter().zip(&noise).map(|(a, b)| a + 0.1 * b).collect();
    let norm = out.iter().map(|x| x * x).sum::<f32>().sqrt();
    out.iter_mut().for_each(|x| *x /= norm);
    out
}

fn body(prompt: &str, stream: bool) -> Value {
    let mut body = json!({"model": "gpt-4o-mini", "messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": prompt},
    ]});
    if stream {
        body["stream"] = json!(true);
        body["stream_options"] = json!({"include_usage": true});
    }
    body
}

/// Status, cache headers and the answer's content (JSON or SSE) of one request.
struct Outcome {
    cache: String,
    matched: String,
    entry: String,
    content: String,
}

async fn ask(client: &reqwest::Client, deja: &str, prompt: &str, stream: bool) -> Outcome {
    let response = client
        .post(format!("http://{deja}/v1/chat/completions"))
        .header("authorization", AUTH)
        .json(&body(prompt, stream))
        .send()
        .await
        .expect("deja answers");
    assert_eq!(response.status(), 200, "{prompt}");
    let header = |name: &str| {
        let value = response.headers().get(name);
        value.map_or(String::new(), |v| v.to_str().unwrap().to_owned())
    };
    let (cache, matched, entry) = (
        header("x-deja-cache"),
        header("x-deja-match"),
        header("x-deja-entry"),
    );
    let text = response.text().await.expect("body");
    let content = if stream {
        let data = text.lines().filter_map(|l| l.strip_prefix("data: "));
        let chunks = data.filter(|d| *d != "[DONE]");
        chunks
            .map(|d| serde_json::from_str::<Value>(d).expect("chunk is JSON"))
            .filter_map(|c| {
                c.pointer("/choices/0/delta/content")?
                    .as_str()
                    .map(String::from)
            })
            .collect()
    } else {
        let json: Value = serde_json::from_str(&text).expect("JSON answer");
        json["choices"][0]["message"]["content"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    Outcome {
        cache,
        matched,
        entry,
        content,
    }
}

#[derive(Default)]
struct Totals {
    sent: usize,
    answered: usize,
    exact_hits: usize,
    semantic_hits: usize,
    restored: usize,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_at_random_moments_and_check_everything_stored() {
    let seed = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    eprintln!("crash loop seed {seed} (CRASH_SEED={seed} repeats it)");
    let rng = Arc::new(Mutex::new(fastrand::Rng::with_seed(seed)));
    let fake = Arc::new(FakeUpstream::start().await);
    fake.set_deterministic(true);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &fake.base_url(), "info", "");
    let client = http_client();
    let started = Instant::now();
    let mut totals = Totals::default();
    let mut deja = DejaProcess::start(&config).await;

    for run in 0..RUNS {
        // Load: every worker stores unique prompts (half of them streamed) until the crash.
        let next = Arc::new(AtomicUsize::new(0));
        let answered = Arc::new(AtomicUsize::new(0));
        let prompts = Arc::new(Mutex::new(Vec::new()));
        let addr = deja.addr.to_string();
        let workers: Vec<_> = (0..WORKERS)
            .map(|_| {
                let (fake, rng, next, answered, prompts) = (
                    fake.clone(),
                    rng.clone(),
                    next.clone(),
                    answered.clone(),
                    prompts.clone(),
                );
                let (client, addr) = (client.clone(), addr.clone());
                tokio::spawn(async move {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let prompt = format!("run {run} prompt {i}: what is stored here?");
                        let (vector, paraphrase) = {
                            let mut rng = rng.lock();
                            let vector = random_unit(&mut rng);
                            (vector.clone(), nudged(&vector, &mut rng))
                        };
                        fake.set_embedding(&prompt, vector);
                        fake.set_embedding(&format!("{prompt} (reworded)"), paraphrase);
                        prompts.lock().push(prompt.clone());
                        let request = client
                            .post(format!("http://{addr}/v1/chat/completions"))
                            .header("authorization", AUTH)
                            .json(&body(&prompt, i % 2 == 0));
                        // Fails once deja is killed: then this worker is done.
                        let Ok(response) = request.send().await else {
                            return;
                        };
                        let Ok(text) = response.text().await else {
                            return;
                        };
                        if !text.is_empty() {
                            answered.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        let kill_after = Duration::from_millis(rng.lock().u64(100..=900));
        tokio::time::sleep(kill_after).await;
        deja.crash().await;
        for worker in workers {
            worker.await.unwrap();
        }
        let prompts = prompts.lock().clone();
        totals.sent += prompts.len();
        totals.answered += answered.load(Ordering::Relaxed);

        // Restart on the same directory: the store opens, each entry has its vector.
        deja = DejaProcess::start(&config).await;
        let fields = &deja.listening["fields"];
        let (entries, indexed) = (
            fields["entries"].as_u64().unwrap(),
            fields["indexed"].as_u64().unwrap(),
        );
        assert_eq!(
            entries, indexed,
            "run {run}: every stored entry has its vector indexed"
        );
        totals.restored = entries as usize;

        // Every prompt of this run: a hit must be exactly upstream's answer; then (stored now
        // either way) its paraphrase must find this very entry through the index.
        let addr = deja.addr.to_string();
        for prompt in &prompts {
            let expected = deterministic_answer(prompt);
            let exact = ask(&client, &addr, prompt, false).await;
            assert_eq!(
                exact.content, expected,
                "run {run}: {prompt} ({})",
                exact.cache
            );
            if exact.cache == "hit" {
                assert_eq!(exact.matched, "exact");
                totals.exact_hits += 1;
            }
            let reworded = format!("{prompt} (reworded)");
            let semantic = ask(&client, &addr, &reworded, true).await;
            assert_eq!(
                (semantic.cache.as_str(), semantic.matched.as_str()),
                ("hit", "semantic"),
                "run {run}: {reworded}"
            );
            assert_eq!(semantic.content, expected, "run {run}: {reworded}");
            if exact.cache == "hit" {
                assert_eq!(
                    semantic.entry, exact.entry,
                    "run {run}: the index points at the same entry"
                );
            }
            totals.semantic_hits += 1;
        }
    }
    let output = deja.output();
    assert!(
        !output.contains("sk-test-crash-loop"),
        "API key in the logs"
    );
    eprintln!(
        "crash loop: {RUNS} runs (SIGKILL each), {} storing requests sent, {} answered before a \
         crash, {} stored prompts found again as exact hits, {} semantic hits on their own \
         entries, {} entries in the store at the end; {:.1} s",
        totals.sent,
        totals.answered,
        totals.exact_hits,
        totals.semantic_hits,
        totals.restored,
        started.elapsed().as_secs_f64()
    );
}
