//! Soak: the real `deja` binary under steady mixed load for a bounded time, its resident memory
//! sampled every second.
//!
//!   cargo bench --bench soak -- [seconds] [--out DIR]      (default 420 s, benches/results)
//!
//! `SOAK_DEJA=PATH` runs another `deja` binary than the one cargo built for this bench (a
//! target directory shared between checkouts can hold another checkout's `release/deja`).
//!
//! Load (loopback only, against the in-repo fake upstream): 4 clients, each pausing 5 ms
//! between requests; per 10 requests 5 exact hits on a hot set of 50 prompts, 2 misses on fresh
//! prompts (stored, so the store keeps changing), 2 streamed misses and 1 streamed hit. Entries
//! live 20 s and are swept every 5 s, so the store reaches a steady size after half a minute.
//! Writes `soak.md` (table of the curve) and `soak.svg` to the output directory. Exits non-zero
//! when a request failed or memory did not level off: the mean RSS of the last 10 s must be
//! within 10% of the mean RSS of the 10 s after the half-way mark.

#[allow(dead_code)]
#[path = "../tests/it/support/fake_upstream.rs"]
mod fake_upstream;

#[path = "common/rss.rs"]
mod rss;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use plotters::prelude::*;
use serde_json::{Value, json};

const CLIENTS: usize = 4;
const PAUSE: Duration = Duration::from_millis(5);
const HOT_PROMPTS: u64 = 50;
/// Growth allowed between the window after the half-way mark and the last window.
const MAX_GROWTH: f64 = 0.10;
const WINDOW_SECS: usize = 10;

#[derive(Default)]
struct Counts {
    requests: AtomicU64,
    failed: AtomicU64,
    hits: AtomicU64,
}

struct Sample {
    second: usize,
    rss_kib: u64,
    requests: u64,
    hits: u64,
}

fn main() -> ExitCode {
    let mut seconds = 420usize;
    let mut out = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/benches/results"));
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--out" => out = PathBuf::from(args.next().expect("--out DIR")),
            "--bench" => {}
            other => match other.parse() {
                Ok(n) => seconds = n,
                Err(_) => eprintln!("soak: ignoring argument {other:?}"),
            },
        }
    }
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(soak(seconds.max(2 * WINDOW_SECS + 2), out))
}

async fn soak(seconds: usize, out: PathBuf) -> ExitCode {
    let upstream = fake_upstream::FakeUpstream::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("proxy.toml");
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[upstream]\nbase_url = \"{}\"\n\
         [cache]\ndir = \"{}\"\nttl_secs = 20\nsweep_interval_secs = 5\n\
         [log]\nformat = \"json\"\nlevel = \"warn,deja=info\"\n",
        upstream.base_url(),
        dir.path().join("cache").display()
    );
    std::fs::write(&config, text).expect("write config");
    let binary = std::env::var_os("SOAK_DEJA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_deja")));
    println!("soak: {} for {seconds} s", binary.display());
    let mut child = Command::new(&binary)
        .arg("--config")
        .arg(&config)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn deja");
    let pid = child.id();
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let addr = loop {
        let line = lines.next().expect("deja exited").expect("read log");
        let log: Value = serde_json::from_str(&line).unwrap_or_default();
        if log["fields"]["message"] == "deja listening" {
            break log["fields"]["addr"].as_str().expect("addr").to_owned();
        }
    };
    // Keep reading its log so it never blocks on a full pipe.
    std::thread::spawn(move || lines.map_while(Result::ok).for_each(drop));

    let counts = Arc::new(Counts::default());
    let deadline = Instant::now() + Duration::from_secs(seconds as u64);
    let mut clients = Vec::new();
    for client in 0..CLIENTS as u64 {
        let (counts, addr) = (counts.clone(), addr.clone());
        clients.push(tokio::spawn(async move {
            let http = fake_upstream::http_client();
            let mut i = 0u64;
            while Instant::now() < deadline {
                i += 1;
                let fresh = format!("client {client} request {i}: what changes over time?");
                let hot = format!(
                    "hot question {} of the soak",
                    (i * 7 + client) % HOT_PROMPTS
                );
                let (prompt, stream) = match i % 10 {
                    0..=4 => (hot, false),
                    5 | 6 => (fresh, false),
                    7 | 8 => (fresh, true),
                    _ => (hot, true),
                };
                match request(&http, &addr, &prompt, stream).await {
                    Ok(hit) => {
                        counts.hits.fetch_add(u64::from(hit), Ordering::Relaxed);
                    }
                    Err(err) => {
                        if counts.failed.fetch_add(1, Ordering::Relaxed) < 5 {
                            eprintln!("soak: request failed: {err}");
                        }
                    }
                }
                counts.requests.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(PAUSE).await;
            }
        }));
    }

    let mut samples = Vec::new();
    let mut ticks = tokio::time::interval(Duration::from_secs(1));
    for second in 0..=seconds {
        ticks.tick().await;
        samples.push(Sample {
            second,
            rss_kib: rss::rss_kib(&pid.to_string()),
            requests: counts.requests.load(Ordering::Relaxed),
            hits: counts.hits.load(Ordering::Relaxed),
        });
    }
    for client in clients {
        let _ = client.await;
    }
    let _ = child.kill();
    let _ = child.wait();

    let mean = |from: usize| {
        let window = &samples[from..from + WINDOW_SECS];
        window.iter().map(|s| s.rss_kib as f64).sum::<f64>() / WINDOW_SECS as f64
    };
    let middle = mean(samples.len() / 2);
    let end = mean(samples.len() - WINDOW_SECS);
    let growth = (end - middle) / middle;
    let requests = counts.requests.load(Ordering::Relaxed);
    let failed = counts.failed.load(Ordering::Relaxed);
    let hits = counts.hits.load(Ordering::Relaxed);
    let leveled = growth < MAX_GROWTH;
    let verdict = format!(
        "{seconds} s, {requests} requests ({hits} hits), {failed} failed; RSS {:.1} MiB after \
         the half-way mark, {:.1} MiB at the end: growth {:+.1}% (limit {:.0}%) => {}",
        middle / 1024.0,
        end / 1024.0,
        growth * 100.0,
        MAX_GROWTH * 100.0,
        if failed == 0 && leveled {
            "PASS"
        } else {
            "FAIL"
        }
    );
    println!("soak: {verdict}");
    std::fs::create_dir_all(&out).expect("output directory");
    std::fs::write(out.join("soak.md"), report(&samples, &verdict)).expect("write soak.md");
    match svg(&samples) {
        Ok(svg) => std::fs::write(out.join("soak.svg"), svg).expect("write soak.svg"),
        Err(err) => eprintln!("soak: no chart: {err}"),
    }
    println!("soak: wrote {}", out.join("soak.md").display());
    if failed == 0 && leveled {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// One chat completion; `Ok(true)` for a cache hit. Anything but a complete 200 is an error.
async fn request(
    http: &reqwest::Client,
    addr: &str,
    prompt: &str,
    stream: bool,
) -> Result<bool, String> {
    let mut body = json!({"model": "gpt-4o-mini", "messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": prompt},
    ]});
    if stream {
        body["stream"] = json!(true);
    }
    let response = http
        .post(format!("http://{addr}/v1/chat/completions"))
        .header("authorization", "Bearer sk-soak")
        .json(&body)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status();
    let hit = response
        .headers()
        .get("x-deja-cache")
        .is_some_and(|v| v == "hit");
    let text = response.text().await.map_err(|e| e.to_string())?;
    let complete = if stream {
        text.trim_end().ends_with("data: [DONE]")
    } else {
        serde_json::from_str::<Value>(&text).is_ok_and(|v| v["choices"][0]["message"].is_object())
    };
    if status == 200 && complete {
        Ok(hit)
    } else {
        Err(format!("status {status}, complete {complete}"))
    }
}

fn report(samples: &[Sample], verdict: &str) -> String {
    let mut md = format!(
        "# Soak\n\n`cargo bench --bench soak -- {}` (release build of the real binary, loopback, \
         in-repo fake upstream; 2 shared cores). {CLIENTS} clients with {} ms pauses; per 10 \
         requests 5 exact hits, 2 misses, 2 streamed misses, 1 streamed hit; entries live 20 s, \
         swept every 5 s.\n\n**{verdict}**\n\n![RSS](soak.svg)\n\n\
         | second | RSS (MiB) | requests | hits |\n|---|---|---|---|\n",
        samples.len() - 1,
        PAUSE.as_millis()
    );
    for s in samples.iter().filter(|s| s.second % 5 == 0) {
        md.push_str(&format!(
            "| {} | {:.1} | {} | {} |\n",
            s.second,
            s.rss_kib as f64 / 1024.0,
            s.requests,
            s.hits
        ));
    }
    md
}

fn svg(samples: &[Sample]) -> Result<String, String> {
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (900, 420)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let top = samples.iter().map(|s| s.rss_kib).max().unwrap_or(1) as f32 / 1024.0 * 1.2;
        let mut chart = ChartBuilder::on(&root)
            .caption("deja resident memory under steady load", ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(56)
            .build_cartesian_2d(0f32..samples.len() as f32, 0f32..top)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc("seconds")
            .y_desc("RSS (MiB)")
            .draw()
            .map_err(|e| e.to_string())?;
        let points = samples
            .iter()
            .map(|s| (s.second as f32, s.rss_kib as f32 / 1024.0));
        chart
            .draw_series(LineSeries::new(points, &RGBColor(31, 119, 180)))
            .map_err(|e| e.to_string())?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(out)
}
