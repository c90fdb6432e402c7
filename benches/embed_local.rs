//! Latency and throughput of the local embedder (all-MiniLM-L6-v2 on the CPU). Prints figures,
//! asserts nothing:
//!
//!     scripts/fetch-model.sh && cargo bench --bench embed_local
//!
//! `DEJA_BENCH_MODEL_DIR` picks another model folder, `DEJA_BENCH_THREADS` sets
//! `embedding.threads` (default 0 = one per core).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use deja::config::{Config, EmbeddingProvider};
use deja::embed::Embedder;

const PROMPTS: [&str; 8] = [
    "How do I reset my password?",
    "translate hello to French",
    "What is the capital of Australia?",
    "Write a haiku about autumn leaves.",
    "Explain the difference between a process and a thread.",
    "Give me a recipe for chocolate chip cookies.",
    "Summarise the plot of Hamlet in two sentences.",
    "What's the weather like in Paris tomorrow morning?",
];

fn median_ms(samples: &mut [Duration]) -> (f64, f64) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    (at(0.5).as_secs_f64() * 1e3, at(0.9).as_secs_f64() * 1e3)
}

fn main() {
    let dir = std::env::var_os("DEJA_BENCH_MODEL_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/all-MiniLM-L6-v2"),
        PathBuf::from,
    );
    let mut config = Config::default();
    config.embedding.provider = EmbeddingProvider::Local;
    config.embedding.model_dir = dir;
    config.embedding.timeout_ms = 600_000;
    if let Some(threads) = std::env::var("DEJA_BENCH_THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
    {
        config.embedding.threads = threads;
    }

    let started = Instant::now();
    let embedder = match Embedder::from_config(&config) {
        Ok(embedder) => Arc::new(embedder),
        Err(err) => {
            eprintln!("embed_local: {err}");
            std::process::exit(1);
        }
    };
    println!(
        "embed_local: {} loaded in {:.0} ms (threads = {}, max_batch = {})",
        embedder.id(),
        started.elapsed().as_secs_f64() * 1e3,
        match config.embedding.threads {
            0 => format!(
                "{} (auto)",
                std::thread::available_parallelism().map_or(1, usize::from)
            ),
            n => n.to_string(),
        },
        config.embedding.max_batch,
    );

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        for prompt in PROMPTS {
            embedder.embed(prompt, None).await.unwrap();
        }

        // Batch 1: one prompt at a time.
        for (label, text) in [
            ("short prompt (~10 tokens)", None),
            ("long prompt (~250 tokens)", Some("Please review this paragraph and tell me whether the tone is right for a customer e-mail about a late delivery. ".repeat(11))),
        ] {
            let mut samples = Vec::new();
            for i in 0..60 {
                let prompt = text.as_deref().unwrap_or(PROMPTS[i % PROMPTS.len()]);
                let t = Instant::now();
                embedder.embed(prompt, None).await.unwrap();
                samples.push(t.elapsed());
            }
            let (p50, p90) = median_ms(&mut samples);
            println!("batch 1, {label}: median {p50:.1} ms, p90 {p90:.1} ms per prompt");
        }

        // Load: `concurrency` callers each embedding prompts back to back.
        for concurrency in [1usize, 8, 32] {
            let per_caller = 256 / concurrency;
            let t = Instant::now();
            let callers: Vec<_> = (0..concurrency)
                .map(|c| {
                    let embedder = embedder.clone();
                    tokio::spawn(async move {
                        let mut latencies = Vec::with_capacity(per_caller);
                        for i in 0..per_caller {
                            let prompt = PROMPTS[(c + i) % PROMPTS.len()];
                            let t = Instant::now();
                            embedder.embed(prompt, None).await.unwrap();
                            latencies.push(t.elapsed());
                        }
                        latencies
                    })
                })
                .collect();
            let mut latencies = Vec::new();
            for caller in callers {
                latencies.extend(caller.await.unwrap());
            }
            let elapsed = t.elapsed().as_secs_f64();
            let (p50, p90) = median_ms(&mut latencies);
            println!(
                "{concurrency:2} concurrent callers: {:.0} prompts/s ({} prompts in {elapsed:.2} s), \
                 latency median {p50:.1} ms, p90 {p90:.1} ms",
                latencies.len() as f64 / elapsed,
                latencies.len(),
            );
        }
    });
}
