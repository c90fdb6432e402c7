//! The hit path: closed-loop load at fixed concurrency, deja against the bare server.

use super::*;

/// One measured block or the sum of several.
#[derive(Default)]
pub(crate) struct Load {
    pub(crate) latencies_ns: Vec<u64>,
    pub(crate) seconds: f64,
    pub(crate) server_cpu: f64,
    pub(crate) generator_cpu: f64,
    pub(crate) server_switches: u64,
    pub(crate) counts: Counts,
}

impl Load {
    pub(crate) fn add(&mut self, other: Load) {
        self.latencies_ns.extend(other.latencies_ns);
        self.seconds += other.seconds;
        self.server_cpu += other.server_cpu;
        self.generator_cpu += other.generator_cpu;
        self.server_switches += other.server_switches;
        self.counts.add(other.counts);
    }

    pub(crate) fn rate(&self) -> f64 {
        self.latencies_ns.len() as f64 / self.seconds
    }

    pub(crate) fn server_switches_per_request(&self) -> f64 {
        self.server_switches as f64 / self.latencies_ns.len() as f64
    }

    pub(crate) fn server_cpu_per_request_us(&self) -> f64 {
        self.server_cpu / self.latencies_ns.len() as f64 * 1e6
    }

    /// Cores this process kept busy (servers + generator); what is missing to the machine's
    /// core count went idle or to other processes.
    pub(crate) fn cores_used(&self) -> f64 {
        (self.generator_cpu + self.server_cpu) / self.seconds
    }

    pub(crate) fn generator_share(&self) -> f64 {
        self.generator_cpu / (self.generator_cpu + self.server_cpu)
    }
}

/// What the closed loop sends.
#[derive(Clone)]
pub(crate) struct Target {
    pub(crate) uri: Uri,
    pub(crate) method: Method,
    pub(crate) body: Bytes,
    pub(crate) expect: Expect,
    /// A body per worker (worker `i` sends the `i`-th), instead of `body` for all.
    pub(crate) per_worker: Option<Arc<Vec<Bytes>>>,
}

impl Target {
    pub(crate) fn for_worker(&self, worker: usize) -> Target {
        let mut target = self.clone();
        if let Some(bodies) = &self.per_worker {
            target.body = bodies[worker % bodies.len()].clone();
        }
        target
    }

    pub(crate) fn request(&self) -> Request<Full<Bytes>> {
        Request::builder()
            .method(self.method.clone())
            .uri(self.uri.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::AUTHORIZATION, AUTHORIZATION)
            .body(Full::new(self.body.clone()))
            .expect("request")
    }
}

/// `concurrency` workers, each with its own keep-alive connection, send requests back to back
/// for warm-up + `measure`; requests started inside the measured window are recorded.
pub(crate) async fn closed_loop(
    target: &Target,
    concurrency: usize,
    warmup: Duration,
    measure: Duration,
) -> Load {
    let start = Instant::now();
    let window = (start + warmup, start + warmup + measure);
    let mut workers = JoinSet::new();
    for worker in 0..concurrency {
        let target = target.for_worker(worker);
        workers.spawn(async move {
            // One connection per worker: its own pool, one request at a time.
            let client = http_client(1);
            let mut latencies = Vec::with_capacity(1 << 16);
            let mut counts = Counts::default();
            loop {
                let sent = Instant::now();
                if sent >= window.1 {
                    break;
                }
                let response = client.request(target.request()).await.expect("response");
                counts.see(response.status(), response.headers());
                response.into_body().collect().await.expect("body");
                if sent >= window.0 {
                    latencies.push(sent.elapsed().as_nanos() as u64);
                }
            }
            (latencies, counts)
        });
    }
    tokio::time::sleep_until(window.0.into()).await;
    let before = thread_stats();
    tokio::time::sleep_until(window.1.into()).await;
    let (server_cpu, generator_cpu, server_switches) = spent_since(&before);
    let mut load = Load {
        seconds: measure.as_secs_f64(),
        server_cpu,
        generator_cpu,
        server_switches,
        ..Load::default()
    };
    while let Some(joined) = workers.join_next().await {
        let (latencies, counts) = joined.expect("worker");
        load.latencies_ns.extend(latencies);
        load.counts.add(counts);
    }
    load
}

pub(crate) fn pct_us(sorted_ns: &[u64], q: f64) -> f64 {
    if sorted_ns.is_empty() {
        return f64::NAN;
    }
    let rank = ((sorted_ns.len() as f64 * q).ceil() as usize).clamp(1, sorted_ns.len());
    sorted_ns[rank - 1] as f64 / 1000.0
}

pub(crate) async fn hit_section(servers: &Servers, plan: Plan) {
    let body = chat_body(HIT_PROMPT, false);
    let bare = Target {
        uri: uri(servers.bare.addr, CHAT_PATH),
        method: Method::POST,
        body: body.clone(),
        expect: Expect::Anything,
        per_worker: None,
    };
    let hit = Target {
        uri: uri(servers.deja.addr, CHAT_PATH),
        method: Method::POST,
        body,
        expect: Expect::Hit,
        per_worker: None,
    };
    let health = Target {
        uri: uri(servers.deja.addr, "/healthz"),
        method: Method::GET,
        body: Bytes::new(),
        expect: Expect::Anything,
        per_worker: None,
    };
    let targets = [
        ("bare hyper (baseline)", &bare),
        ("deja exact hit", &hit),
        ("deja `GET /healthz` (listener + router only)", &health),
    ];

    println!("## 1. Hit path: closed loop, one keep-alive connection per worker\n");
    println!(
        "Each worker sends the same `POST {CHAT_PATH}` back to back; latency is per request \
         (send to last body byte). Every deja response was checked for `x-deja-cache: hit`. \
         `/healthz` is answered by deja's router before any cache work: it shows what the \
         listener alone costs (2-byte body). A hit first registers its exact key for \
         coalescing, so identical requests arriving during its lookup wait for it and are \
         answered from its entry (`x-deja-match: coalesced`); the last column counts both.\n"
    );
    println!(
        "| concurrency | server | requests/s | p50 (µs) | p99 (µs) | p99.9 (µs) | server CPU/request (µs) | server context switches/request | generator's CPU share | cores used | throughput vs bare | hits exact / coalesced |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    let mut at16 = None;
    for concurrency in CONCURRENCY {
        let loads = interleaved(&targets, concurrency, plan).await;
        let bare_rate = loads[0].rate();
        for (i, ((name, target), load)) in targets.iter().zip(loads.iter()).enumerate() {
            let ratio = if i == 0 {
                "1 (baseline)".to_string()
            } else {
                format!("{:.2}", load.rate() / bare_rate)
            };
            let matched = if target.expect == Expect::Hit {
                format!("{} / {}", load.counts.exact, load.counts.coalesced)
            } else {
                String::new()
            };
            println!(
                "| {concurrency} | {name} | {:.0} | {:.0} | {:.0} | {:.0} | {:.1} | {:.2} | {:.0}% | {:.2} | {ratio} | {matched} |",
                load.rate(),
                pct_us(&load.latencies_ns, 0.5),
                pct_us(&load.latencies_ns, 0.99),
                pct_us(&load.latencies_ns, 0.999),
                load.server_cpu_per_request_us(),
                load.server_switches_per_request(),
                load.generator_share() * 100.0,
                load.cores_used(),
            );
        }
        if concurrency == 16 {
            let hit = &loads[1];
            at16 = Some((
                hit.rate() / bare_rate,
                pct_us(&hit.latencies_ns, 0.99),
                loads[0].server_cpu_per_request_us() / hit.server_cpu_per_request_us(),
            ));
        }
    }
    if let Some((ratio, p99, cpu_ratio)) = at16 {
        println!();
        println!(
            "- target: deja exact hits ≥ {:.0}% of the bare server's throughput at concurrency \
             16: {:.0}% → **{}** (by server CPU per request instead: {:.0}%)",
            TARGET_HIT_RATIO * 100.0,
            ratio * 100.0,
            verdict(ratio >= TARGET_HIT_RATIO),
            cpu_ratio * 100.0
        );
        println!(
            "- target: deja exact-hit p99 < 1 ms at concurrency 16: {p99:.0} µs → **{}**",
            verdict(p99 < TARGET_P99_US)
        );
    }
    println!();
}

/// Runs each target in two half-length blocks, interleaved (A B C C B A) so a drift of the
/// shared machine affects all alike; checks every response and sorts the latencies.
pub(crate) async fn interleaved(
    targets: &[(&str, &Target)],
    concurrency: usize,
    plan: Plan,
) -> Vec<Load> {
    let mut loads: Vec<Load> = targets.iter().map(|_| Load::default()).collect();
    let order: Vec<usize> = (0..targets.len()).chain((0..targets.len()).rev()).collect();
    for &i in &order {
        let block = closed_loop(targets[i].1, concurrency, plan.warmup, plan.measure / 2).await;
        loads[i].add(block);
    }
    for ((name, target), load) in targets.iter().zip(loads.iter_mut()) {
        load.counts.check(
            target.expect,
            &format!("{name} at concurrency {concurrency}"),
        );
        load.latencies_ns.sort_unstable();
    }
    loads
}

pub(crate) fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "not met" }
}

/// Only deja's exact hits, for a profiler to attach to.
pub(crate) async fn profile_hits(servers: &Servers, concurrency: usize) {
    let target = Target {
        uri: uri(servers.deja.addr, CHAT_PATH),
        method: Method::POST,
        body: chat_body(HIT_PROMPT, false),
        expect: Expect::Hit,
        per_worker: None,
    };
    let mut load = closed_loop(
        &target,
        concurrency,
        Duration::from_secs(1),
        Duration::from_secs(15),
    )
    .await;
    load.counts.check(Expect::Hit, "profile");
    load.latencies_ns.sort_unstable();
    println!(
        "profile run: deja exact hits at concurrency {concurrency}: {:.0} requests/s, p50 {:.0} \
         µs, p99 {:.0} µs, server CPU/request {:.1} µs, server context switches/request {:.2}",
        load.rate(),
        pct_us(&load.latencies_ns, 0.5),
        pct_us(&load.latencies_ns, 0.99),
        load.server_cpu_per_request_us(),
        load.server_switches_per_request()
    );
}
