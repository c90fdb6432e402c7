//! The closed-loop load and its 1-second windows.

use super::*;

#[derive(Default, Clone)]
pub(crate) struct Window {
    /// Seconds since the run started, at the window's end.
    pub(crate) at: f64,
    pub(crate) seconds: f64,
    pub(crate) entries: u64,
    pub(crate) latencies_us: Vec<f64>,
    pub(crate) process_cpu: f64,
    pub(crate) embed_cpu: f64,
    pub(crate) pending: usize,
    pub(crate) deferred: usize,
}

pub(crate) struct Run {
    pub(crate) semantic: bool,
    pub(crate) windows: Vec<Window>,
    /// When each band of `entries / BANDS` misses was complete, and the embedding CPU then.
    pub(crate) bands: Vec<(Instant, f64)>,
    pub(crate) band_latencies: Vec<Vec<f64>>,
    pub(crate) embed_calls: u64,
    pub(crate) not_miss: u64,
}

pub(crate) struct Shared {
    pub(crate) issued: AtomicUsize,
    pub(crate) done: AtomicU64,
    pub(crate) not_miss: AtomicU64,
    pub(crate) window: Mutex<Vec<f64>>,
    pub(crate) band_latencies: Vec<Mutex<Vec<f64>>>,
    pub(crate) bands: Mutex<Vec<(Instant, f64)>>,
}

pub(crate) async fn drive(deja: &RunningServer, fake: &Fake, args: &Args, semantic: bool) -> Run {
    let band = (args.entries / BANDS).max(1);
    let shared = Arc::new(Shared {
        issued: AtomicUsize::new(0),
        done: AtomicU64::new(0),
        not_miss: AtomicU64::new(0),
        window: Mutex::new(Vec::new()),
        band_latencies: (0..BANDS).map(|_| Mutex::new(Vec::new())).collect(),
        bands: Mutex::new(Vec::new()),
    });
    let uri: http::Uri = format!("http://{}/v1/chat/completions", deja.addr)
        .parse()
        .expect("uri");
    let embed_calls_before = fake.embeddings.load(Ordering::Relaxed);
    let started = Instant::now();
    shared.bands.lock().push((started, fake.embed_cpu()));
    let embed_tid = fake.embed_tid;
    let mut tasks = Vec::new();
    for _ in 0..args.connections {
        let (shared, uri, entries) = (shared.clone(), uri.clone(), args.entries);
        tasks.push(tokio::spawn(async move {
            let mut connector = HttpConnector::new();
            connector.set_nodelay(true);
            let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
                .pool_max_idle_per_host(1)
                .build(connector);
            loop {
                let n = shared.issued.fetch_add(1, Ordering::Relaxed);
                if n >= entries {
                    break;
                }
                let sent = Instant::now();
                let response = client.request(post(&uri, n)).await.expect("response");
                let status = response.status();
                let miss = response
                    .headers()
                    .get("x-deja-cache")
                    .is_some_and(|v| v == "miss");
                let _ = response.into_body().collect().await.expect("body");
                let us = sent.elapsed().as_secs_f64() * 1e6;
                assert_eq!(status, StatusCode::OK);
                if !miss {
                    shared.not_miss.fetch_add(1, Ordering::Relaxed);
                }
                shared.window.lock().push(us);
                shared.band_latencies[(n / band).min(BANDS - 1)]
                    .lock()
                    .push(us);
                let done = shared.done.fetch_add(1, Ordering::Relaxed) + 1;
                if done % band as u64 == 0 {
                    shared
                        .bands
                        .lock()
                        .push((Instant::now(), thread_cpu(embed_tid)));
                }
            }
        }));
    }
    let windows = sample(deja, fake, &shared, args.entries as u64, started).await;
    for task in tasks {
        task.await.expect("load task");
    }
    let band_latencies = shared
        .band_latencies
        .iter()
        .map(|l| std::mem::take(&mut *l.lock()))
        .collect();
    let bands = shared.bands.lock().clone();
    Run {
        semantic,
        windows,
        bands,
        band_latencies,
        embed_calls: fake.embeddings.load(Ordering::Relaxed) - embed_calls_before,
        not_miss: shared.not_miss.load(Ordering::Relaxed),
    }
}

/// One row per window until every request is answered.
pub(crate) async fn sample(
    deja: &RunningServer,
    fake: &Fake,
    shared: &Shared,
    entries: u64,
    started: Instant,
) -> Vec<Window> {
    let cache = deja.app.cache.clone().expect("cache");
    let mut windows = Vec::new();
    let (mut last, mut cpu, mut embed) = (started, process_cpu(), fake.embed_cpu());
    loop {
        tokio::time::sleep(WINDOW.saturating_sub(last.elapsed())).await;
        let now = Instant::now();
        let latencies = std::mem::take(&mut *shared.window.lock());
        let (cpu_now, embed_now) = (process_cpu(), fake.embed_cpu());
        let backlog = cache.index_backlog();
        let window = Window {
            at: (now - started).as_secs_f64(),
            seconds: (now - last).as_secs_f64(),
            entries: shared.done.load(Ordering::Relaxed),
            latencies_us: latencies,
            process_cpu: cpu_now - cpu,
            embed_cpu: embed_now - embed,
            pending: backlog.pending,
            deferred: backlog.deferred,
        };
        eprintln!(
            "{:>6.1} s  {:>7} entries  {:>6.0} misses/s  p99 {:>7.0} µs  cores {:.2}  \
             pending {} deferred {}",
            window.at,
            window.entries,
            window.latencies_us.len() as f64 / window.seconds,
            pct(&window.latencies_us, 0.99),
            window.process_cpu / window.seconds,
            window.pending,
            window.deferred,
        );
        let finished = window.entries >= entries;
        windows.push(window);
        (last, cpu, embed) = (now, cpu_now, embed_now);
        if finished {
            return windows;
        }
    }
}

pub(crate) fn post(uri: &http::Uri, n: usize) -> Request<Full<Bytes>> {
    let body = json!({
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": format!("Question {n}: what should I know about topic {n}?")}
        ]
    });
    Request::post(uri.clone())
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::AUTHORIZATION, "Bearer sk-bench-tenant")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("request")
}
