//! The miss path: open-loop load at a fixed rate through deja and straight to the upstream.

use super::*;

/// Times of one request: to the first body byte, and to the end of the body.
pub(crate) struct Timing {
    pub(crate) first_byte_ns: u64,
    pub(crate) total_ns: u64,
    /// How late the request left compared with its schedule.
    pub(crate) lag_ns: u64,
}

#[derive(Default)]
pub(crate) struct OpenLoad {
    pub(crate) timings: Vec<Timing>,
    pub(crate) counts: Counts,
    pub(crate) seconds: f64,
    /// Requests not sent because `MAX_IN_FLIGHT` were out (the machine could not keep up).
    pub(crate) shed: u64,
}

/// Requests one open loop keeps out at most. Each holds four descriptors of this process
/// (the client's socket, deja's or the relay's two, the upstream's); past this the loop
/// sheds load, reported, instead of failing on the process's file limit (often 20,000)
/// when a saturated machine lets requests pile up.
const MAX_IN_FLIGHT: usize = 3_000;

/// Sends a new unique request every 1/`rate` s for warm-up + `measure`, whatever is still in
/// flight (open loop; the pooled client opens connections as needed). Latency is taken from
/// the moment each request is sent; its lag behind the schedule is reported separately.
pub(crate) async fn open_loop(
    client: &HttpClient,
    uri: &Uri,
    stream: bool,
    rate: f64,
    warmup: Duration,
    measure: Duration,
) -> OpenLoad {
    let period = Duration::from_secs_f64(1.0 / rate);
    let start = Instant::now();
    let (from, until) = (start + warmup, start + warmup + measure);
    let mut load = OpenLoad {
        seconds: measure.as_secs_f64(),
        ..OpenLoad::default()
    };
    let mut requests = JoinSet::new();
    let take = |load: &mut OpenLoad, joined: Result<(bool, Timing, Counts), _>| {
        let (measured, timing, counts) = joined.expect("request task");
        load.counts.add(counts);
        if measured {
            load.timings.push(timing);
        }
    };
    for i in 0u32.. {
        let at = start + period * i;
        if at >= until {
            break;
        }
        tokio::time::sleep_until(at.into()).await;
        while let Some(joined) = requests.try_join_next() {
            take(&mut load, joined);
        }
        if requests.len() >= MAX_IN_FLIGHT {
            load.shed += 1;
            continue;
        }
        let request = timed(client.clone(), post(uri, miss_body(stream)), stream, at);
        requests.spawn(async move {
            let (timing, counts) = request.await;
            (at >= from, timing, counts)
        });
    }
    while let Some(joined) = requests.join_next().await {
        take(&mut load, joined);
    }
    if load.shed > 0 {
        // stderr: stdout is the markdown report; the stream section names it in its row.
        eprintln!(
            "open loop at {rate:.0}/s: {} requests shed ({MAX_IN_FLIGHT} in flight)",
            load.shed
        );
    }
    load
}

/// Sends `request` (due at `at`) and reads its body, timing the first byte and the end.
pub(crate) async fn timed(
    client: HttpClient,
    request: Request<Full<Bytes>>,
    stream: bool,
    at: Instant,
) -> (Timing, Counts) {
    let sent = Instant::now();
    let response = client.request(request).await.expect("response");
    let mut counts = Counts::default();
    counts.see(response.status(), response.headers());
    let mut body = response.into_body();
    let mut first_byte = None;
    let mut tail = Bytes::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.expect("body frame").into_data() {
            first_byte.get_or_insert_with(|| sent.elapsed());
            tail = data;
        }
    }
    let total = sent.elapsed();
    if stream {
        assert!(contains(&tail, b"data: [DONE]"), "stream ends with [DONE]");
    }
    let timing = Timing {
        first_byte_ns: first_byte.unwrap_or(total).as_nanos() as u64,
        total_ns: total.as_nanos() as u64,
        lag_ns: sent.saturating_duration_since(at).as_nanos() as u64,
    };
    (timing, counts)
}

/// Sorted figures of one side of a comparison.
pub(crate) struct Sample {
    pub(crate) first_byte: Vec<u64>,
    pub(crate) total: Vec<u64>,
    pub(crate) lag: Vec<u64>,
}

impl Sample {
    pub(crate) fn new(load: &OpenLoad) -> Sample {
        let sorted = |f: fn(&Timing) -> u64| {
            let mut v: Vec<u64> = load.timings.iter().map(f).collect();
            v.sort_unstable();
            v
        };
        Sample {
            first_byte: sorted(|t| t.first_byte_ns),
            total: sorted(|t| t.total_ns),
            lag: sorted(|t| t.lag_ns),
        }
    }
}

/// Runs the same open loop directly against the fake upstream and through deja, interleaved
/// A B B A.
pub(crate) async fn compare(servers: &Servers, stream: bool, plan: Plan) -> (Sample, Sample) {
    let direct_uri = uri(servers.upstream.addr, CHAT_PATH);
    let deja_uri = uri(servers.deja.addr, CHAT_PATH);
    let direct_client = http_client(256);
    let deja_client = http_client(256);
    let mut direct = OpenLoad::default();
    let mut via = OpenLoad::default();
    for via_deja in [false, true, true, false] {
        let (client, uri, into) = if via_deja {
            (&deja_client, &deja_uri, &mut via)
        } else {
            (&direct_client, &direct_uri, &mut direct)
        };
        let block = open_loop(
            client,
            uri,
            stream,
            MISS_RATE,
            plan.warmup,
            plan.measure / 2,
        )
        .await;
        into.timings.extend(block.timings);
        into.counts.add(block.counts);
        into.seconds += block.seconds;
    }
    let what = if stream { "streamed misses" } else { "misses" };
    direct
        .counts
        .check(Expect::Anything, &format!("direct {what}"));
    via.counts.check(Expect::Miss, &format!("deja {what}"));
    (Sample::new(&direct), Sample::new(&via))
}

pub(crate) async fn miss_section(servers: &Servers, plan: Plan) {
    println!("## 2. Miss path: latency added by deja\n");
    println!(
        "Open loop at a fixed {MISS_RATE:.0} requests/s (a new request every {:.0} ms whatever \
         is in flight, over a pooled keep-alive client), unique prompt per request (a counter \
         in the last user message), so every request through deja is a miss: exact lookup, \
         coalescing registration, upstream call, store in sled before answering. Semantic \
         tier off (no embedding call). \"direct\" calls the fake upstream itself. Added = \
         deja's percentile minus direct's percentile (a difference of percentiles, not a \
         percentile of per-request differences). Latency runs from sending to the last body \
         byte.\n",
        1000.0 / MISS_RATE
    );
    println!(
        "| upstream latency | requests (direct / deja) | direct p50 (µs) | direct p99 (µs) | deja p50 (µs) | deja p99 (µs) | added p50 (µs) | added p99 (µs) | p99 added < 1 ms | send lag p99 (µs) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for latency in UPSTREAM_LATENCY_MS {
        servers
            .upstream_state
            .latency_ms
            .store(latency, Ordering::Relaxed);
        let (direct, via) = compare(servers, false, plan).await;
        let added = |q| pct_us(&via.total, q) - pct_us(&direct.total, q);
        println!(
            "| {latency} ms | {} / {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {} | {:.0} |",
            direct.total.len(),
            via.total.len(),
            pct_us(&direct.total, 0.5),
            pct_us(&direct.total, 0.99),
            pct_us(&via.total, 0.5),
            pct_us(&via.total, 0.99),
            added(0.5),
            added(0.99),
            verdict(added(0.99) < TARGET_P99_US),
            pct_us(&direct.lag, 0.99).max(pct_us(&via.lag, 0.99)),
        );
    }
    servers
        .upstream_state
        .latency_ms
        .store(0, Ordering::Relaxed);

    println!();
    println!(
        "### Streaming: time to first byte of a `\"stream\": true` miss\n\n\
         Same open loop ({MISS_RATE:.0} requests/s, unique prompts). The fake upstream answers \
         at once and streams {} SSE chunks {} ms apart, then `data: [DONE]`. TTFB runs from \
         sending to the first body byte (the first chunk); deja relays chunks as they arrive \
         and holds back only the final one until the answer is stored.\n",
        STREAM_CHUNKS,
        STREAM_GAP.as_millis()
    );
    println!(
        "| requests (direct / deja) | direct TTFB p50 (µs) | direct TTFB p99 (µs) | deja TTFB p50 (µs) | deja TTFB p99 (µs) | added TTFB p50 (µs) | added TTFB p99 (µs) | p99 added < 1 ms | whole stream p50 direct / deja (ms) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let (direct, via) = compare(servers, true, plan).await;
    let added = |q| pct_us(&via.first_byte, q) - pct_us(&direct.first_byte, q);
    println!(
        "| {} / {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {} | {:.1} / {:.1} |",
        direct.first_byte.len(),
        via.first_byte.len(),
        pct_us(&direct.first_byte, 0.5),
        pct_us(&direct.first_byte, 0.99),
        pct_us(&via.first_byte, 0.5),
        pct_us(&via.first_byte, 0.99),
        added(0.5),
        added(0.99),
        verdict(added(0.99) < TARGET_P99_US),
        pct_us(&direct.total, 0.5) / 1000.0,
        pct_us(&via.total, 0.5) / 1000.0,
    );
}
