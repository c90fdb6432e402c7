//! Section 2b: where the time to first byte that deja adds to a streamed miss comes from.
//!
//! Section 2 compares two runs, the fake upstream alone and then deja in front of it, each at
//! 1,000 streams/s. Those runs do not load the machine alike: through deja every chunk is also
//! read, parsed and written again, on the same 2 cores as the load generator and the upstream.
//! So here sparse probes (`PROBE_RATE`, in turn straight to the upstream, through deja and
//! through a bare relay that only forwards bytes, `relay.rs`) run inside a background load,
//! and the kinds of probe are compared *under the same load*: what deja itself adds to a
//! request, apart from what the machine's load adds to everything, and how that compares with
//! what relaying alone adds. The background is 1,000 or 250 streams/s to the upstream alone,
//! through deja, through the relay, or none; the process's CPU use is shown for each.

use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use super::{
    CHAT_PATH, Counts, Expect, HttpClient, MISS_RATE, Plan, Servers, TARGET_P99_US, Timing,
    http_client, load_average, miss_body, open_loop, pct_us, post, spent_since, thread_stats,
    timed, upstream_spent_since, uri, verdict,
};

/// Probes per second, a third of them each straight, through deja and through the bare relay:
/// few enough to add little load themselves.
const PROBE_RATE: f64 = 300.0;
/// Each background runs this many times the plan's measured time: a p99 needs many probes.
const LONGER: u32 = 2;

/// Where probes and background load go.
#[derive(Clone, Copy, PartialEq)]
enum Via {
    Direct,
    Deja,
    Relay,
}

pub async fn stream_section(servers: &Servers, plan: Plan) {
    println!("### Streaming: what the added time to first byte is made of\n");
    println!(
        "Probes at {PROBE_RATE:.0}/s (streamed misses, in turn straight to the fake upstream, \
         through deja and through a bare relay, unique prompts) run inside a background open \
         loop of streamed misses at the rate shown, sent to the upstream alone, through deja, \
         through the relay, or nowhere. The relay (`proxy_load/relay.rs`) forwards with \
         hyper's client and hands each chunk on unread: what relaying alone costs here, the \
         floor under any proxy. \"added\" = a relayed probe's percentile minus the direct \
         probe's, both measured under the same background. \"send lag\": how late the \
         generator sent its probes (its own wait for CPU). \"cores\": CPU seconds per second \
         of this process (servers = fake upstream + deja + relay; generator = load \
         generator), out of 2; the rest of the machine is shared with other work (load \
         average shown).\n"
    );
    println!(
        "| background | probes (direct / deja / relay) | direct TTFB p50 / p99 (µs) | deja TTFB p50 / p99 (µs) | relay TTFB p50 / p99 (µs) | deja added p50 / p99 (µs) | relay added p50 / p99 (µs) | deja p99 added < 1 ms | probe send lag p99 (µs) | cores: servers + generator | load average |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    let uris = [
        uri(servers.upstream.addr, CHAT_PATH),
        uri(servers.deja.addr, CHAT_PATH),
        uri(servers.relay.addr, CHAT_PATH),
    ];
    let backgrounds = [
        ("none", None, 0.0),
        ("upstream alone, 1000/s", Some(Via::Direct), MISS_RATE),
        ("through deja, 1000/s", Some(Via::Deja), MISS_RATE),
        ("through the relay, 1000/s", Some(Via::Relay), MISS_RATE),
        ("through deja, 250/s", Some(Via::Deja), MISS_RATE / 4.0),
        (
            "through the relay, 250/s",
            Some(Via::Relay),
            MISS_RATE / 4.0,
        ),
    ];
    // Servers' cores per background, for the CPU a stream costs each way.
    let mut cores = Vec::new();
    // p99 TTFB of the direct probes under the upstream-alone load, and of deja's probes under
    // deja's load: section 2's comparison, made from the probes.
    let (mut direct_alone, mut deja_loaded) = (f64::NAN, f64::NAN);
    let measure = plan.measure * LONGER;
    for (name, target, rate) in backgrounds {
        let background = async {
            let Some(via) = target else { return 0 };
            let client = http_client(256);
            let load = open_loop(
                &client,
                &uris[via as usize],
                true,
                rate,
                plan.warmup,
                measure,
            )
            .await;
            load.counts.check(Expect::Anything, name);
            load.shed
        };
        let measured = async {
            tokio::time::sleep(plan.warmup).await;
            let before = thread_stats();
            let timings = probe(&uris, measure).await;
            let (servers_cpu, generator_cpu, _) = spent_since(&before);
            (timings, servers_cpu, generator_cpu)
        };
        let ((timings, servers_cpu, generator_cpu), shed) = tokio::join!(measured, background);
        // A saturated machine lets streams pile up; past its in-flight cap the load is shed.
        let name = match shed {
            0 => name.to_string(),
            shed => format!("{name} ({shed} not sent: saturated)"),
        };
        let mut lag: Vec<u64> = timings.iter().flatten().map(|t| t.lag_ns).collect();
        lag.sort_unstable();
        let [direct, via_deja, via_relay] = timings.map(|t| {
            let mut ns: Vec<u64> = t.iter().map(|t| t.first_byte_ns).collect();
            ns.sort_unstable();
            ns
        });
        let added = |via: &[u64], q| pct_us(via, q) - pct_us(&direct, q);
        if target == Some(Via::Direct) {
            direct_alone = pct_us(&direct, 0.99);
        }
        if target == Some(Via::Deja) && rate == MISS_RATE {
            deja_loaded = pct_us(&via_deja, 0.99);
        }
        let seconds = measure.as_secs_f64();
        cores.push(servers_cpu / seconds);
        println!(
            "| {name} | {} / {} / {} | {:.0} / {:.0} | {:.0} / {:.0} | {:.0} / {:.0} | {:.0} / {:.0} | {:.0} / {:.0} | {} | {:.0} | {:.2} + {:.2} | {} |",
            direct.len(),
            via_deja.len(),
            via_relay.len(),
            pct_us(&direct, 0.5),
            pct_us(&direct, 0.99),
            pct_us(&via_deja, 0.5),
            pct_us(&via_deja, 0.99),
            pct_us(&via_relay, 0.5),
            pct_us(&via_relay, 0.99),
            added(&via_deja, 0.5),
            added(&via_deja, 0.99),
            added(&via_relay, 0.5),
            added(&via_relay, 0.99),
            verdict(added(&via_deja, 0.99) < TARGET_P99_US),
            pct_us(&lag, 0.99),
            servers_cpu / seconds,
            generator_cpu / seconds,
            load_average(),
        );
    }
    println!(
        "\nCompared as section 2 does (deja's probes under deja's load against direct probes \
         under the upstream's load alone), deja adds {:.0} µs at p99; under the same load \
         (row \"through deja, 1000/s\") it adds what that row shows.\n",
        deja_loaded - direct_alone
    );
    // From the 250/s rows, where nothing saturates: each way's cores over the probes' own,
    // less the upstream's share of a stream (from the upstream-alone row).
    let upstream_ms = (cores[1] - cores[0]) / MISS_RATE * 1e3;
    let per_stream_ms =
        |row: usize| (cores[row] - cores[0]) / (MISS_RATE / 4.0) * 1e3 - upstream_ms;
    let (deja_ms, relay_ms) = (per_stream_ms(4), per_stream_ms(5));
    println!(
        "CPU per stream (servers' threads, from the rows above): the fake upstream {upstream_ms:.2} \
         ms; on top of it deja {deja_ms:.2} ms, the bare relay {relay_ms:.2} ms (deja {:.1}× the \
         relay).\n",
        deja_ms / relay_ms
    );
}

/// Sends a streamed miss every 1/`PROBE_RATE` s for `measure`, to each of `uris` in turn
/// (straight, through deja, through the relay); the timings of each.
async fn probe(uris: &[http::Uri; 3], measure: Duration) -> [Vec<Timing>; 3] {
    let period = Duration::from_secs_f64(1.0 / PROBE_RATE);
    let clients: [HttpClient; 3] = std::array::from_fn(|_| http_client(16));
    let start = Instant::now();
    let mut requests = JoinSet::new();
    for i in 0u32.. {
        let at = start + period * i;
        if at >= start + measure {
            break;
        }
        tokio::time::sleep_until(at.into()).await;
        let side = (i % 3) as usize;
        let request = timed(
            clients[side].clone(),
            post(&uris[side], miss_body(true)),
            true,
            at,
        );
        requests.spawn(async move { (side, request.await) });
    }
    let mut out = [Vec::new(), Vec::new(), Vec::new()];
    let mut counts = [Counts::default(), Counts::default(), Counts::default()];
    while let Some(joined) = requests.join_next().await {
        let (side, (timing, seen)) = joined.expect("probe");
        out[side].push(timing);
        counts[side].add(seen);
    }
    counts[Via::Direct as usize].check(Expect::Anything, "direct probes");
    counts[Via::Deja as usize].check(Expect::Miss, "deja probes");
    counts[Via::Relay as usize].check(Expect::Anything, "relay probes");
    out
}

/// `--profile-stream[=RATE]`: streamed misses at RATE/s (default 500) for 15 s each, in turn
/// straight to the upstream, through deja and through the relay, twice (A B C A B C); prints
/// the servers' CPU per stream of each. With `--upstream-runtime` the fake upstream's CPU is
/// counted apart, so deja's and the relay's own come from the same round. Run it under a
/// profiler to see deja's share.
pub async fn profile_streams(servers: &Servers, rate: f64) {
    let uris = [
        uri(servers.upstream.addr, CHAT_PATH),
        uri(servers.deja.addr, CHAT_PATH),
        uri(servers.relay.addr, CHAT_PATH),
    ];
    let names = ["straight", "through deja", "through the relay"];
    let measure = Duration::from_secs(15);
    // Per side: all servers' CPU per stream, and the same less the upstream runtime's.
    let mut per_stream = [Vec::new(), Vec::new(), Vec::new()];
    let mut own = [Vec::new(), Vec::new(), Vec::new()];
    for round in 0..2 {
        for (side, name) in names.iter().enumerate() {
            let client = http_client(256);
            let before = thread_stats();
            let load = open_loop(&client, &uris[side], true, rate, Duration::ZERO, measure).await;
            let (servers_cpu, _, _) = spent_since(&before);
            let upstream_cpu = upstream_spent_since(&before);
            load.counts.check(Expect::Anything, name);
            let streams = load.counts.total.max(1) as f64;
            let (ms, own_ms) = (
                servers_cpu / streams * 1e3,
                (servers_cpu - upstream_cpu) / streams * 1e3,
            );
            println!(
                "round {round}, {name}: {streams} streams, servers' CPU per stream {ms:.3} ms, \
                 without the upstream's runtime {own_ms:.3} ms"
            );
            per_stream[side].push(ms);
            own[side].push(own_ms);
        }
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let upstream = mean(&per_stream[0]);
    let (deja, relay) = (
        mean(&per_stream[1]) - upstream,
        mean(&per_stream[2]) - upstream,
    );
    println!(
        "CPU per stream on top of the upstream's {upstream:.3} ms: deja {deja:.3} ms, the relay \
         {relay:.3} ms (deja {:.2}× the relay)",
        deja / relay
    );
    if own[0].iter().all(|ms| *ms < 0.5 * upstream) {
        let (deja, relay) = (mean(&own[1]), mean(&own[2]));
        println!(
            "Outside the upstream's runtime (same rounds): deja {deja:.3} ms, the relay \
             {relay:.3} ms (deja {:.2}× the relay)",
            deja / relay
        );
    }
}
