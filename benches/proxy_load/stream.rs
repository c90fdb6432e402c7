//! Section 2b: where the time to first byte that deja adds to a streamed miss comes from.
//!
//! Section 2 compares two runs, the fake upstream alone and then deja in front of it, each at
//! 1,000 streams/s. Those runs do not load the machine alike: through deja every chunk is also
//! read, parsed and written again, on the same 2 cores as the load generator and the upstream.
//! So here sparse probes (`PROBE_RATE`, alternately straight to the upstream and through
//! deja) run inside a background load, and the two kinds of probe are compared *under the
//! same load*: what deja itself adds to a request, apart from what the machine's load adds to
//! everything. The background is 1,000 streams/s to the upstream alone, or through deja, or
//! none; the process's CPU use is shown for each.

use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use super::{
    CHAT_PATH, Counts, Expect, HttpClient, MISS_RATE, Plan, Servers, TARGET_P99_US, Timing,
    http_client, load_average, miss_body, open_loop, pct_us, post, spent_since, thread_stats,
    timed, uri, verdict,
};

/// Probes per second, half of them through deja: few enough to add little load themselves.
const PROBE_RATE: f64 = 200.0;
/// Each background runs this many times the plan's measured time: a p99 needs many probes.
const LONGER: u32 = 2;

pub async fn stream_section(servers: &Servers, plan: Plan) {
    println!("### Streaming: what the added time to first byte is made of\n");
    println!(
        "Probes at {PROBE_RATE:.0}/s (streamed misses, alternately straight to the fake \
         upstream and through deja, unique prompts) run inside a background open loop of \
         streamed misses at the rate shown, sent to the upstream alone, through deja, or \
         nowhere. \"added\" = deja probe's percentile minus the direct probe's, both measured \
         under the same background. \"send lag\": how late the generator sent its probes \
         (its own wait for CPU). \"cores\": CPU seconds per second of this process (servers \
         = fake upstream + deja; generator = load generator), out of 2; the rest of the \
         machine is shared with other work (load average shown).\n"
    );
    println!(
        "| background | probes (direct / deja) | direct TTFB p50 / p99 (µs) | deja TTFB p50 / p99 (µs) | added p50 (µs) | added p99 (µs) | p99 added < 1 ms | probe send lag p99 (µs) | cores: servers + generator | load average |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let direct_uri = uri(servers.upstream.addr, CHAT_PATH);
    let deja_uri = uri(servers.deja.addr, CHAT_PATH);
    let backgrounds = [
        ("none", None, 0.0),
        ("upstream alone, 1000/s", Some(&direct_uri), MISS_RATE),
        ("through deja, 1000/s", Some(&deja_uri), MISS_RATE),
        ("through deja, 250/s", Some(&deja_uri), MISS_RATE / 4.0),
    ];
    // p99 TTFB of the direct probes under the upstream-alone load, and of deja's probes under
    // deja's load: section 2's comparison, made from the probes.
    let (mut direct_alone, mut deja_loaded) = (f64::NAN, f64::NAN);
    let measure = plan.measure * LONGER;
    for (i, (name, target, rate)) in backgrounds.into_iter().enumerate() {
        let probes = [&direct_uri, &deja_uri];
        let background = async {
            if let Some(target) = target {
                let client = http_client(256);
                let load = open_loop(&client, target, true, rate, plan.warmup, measure).await;
                load.counts.check(Expect::Anything, name);
            }
        };
        let measured = async {
            tokio::time::sleep(plan.warmup).await;
            let before = thread_stats();
            let timings = probe(probes, measure).await;
            let (servers_cpu, generator_cpu, _) = spent_since(&before);
            (timings, servers_cpu, generator_cpu)
        };
        let ((timings, servers_cpu, generator_cpu), ()) = tokio::join!(measured, background);
        let mut lag: Vec<u64> = timings.iter().flatten().map(|t| t.lag_ns).collect();
        lag.sort_unstable();
        let [direct, via] = timings.map(|t| {
            let mut ns: Vec<u64> = t.iter().map(|t| t.first_byte_ns).collect();
            ns.sort_unstable();
            ns
        });
        let added = |q| pct_us(&via, q) - pct_us(&direct, q);
        match i {
            1 => direct_alone = pct_us(&direct, 0.99),
            2 => deja_loaded = pct_us(&via, 0.99),
            _ => {}
        }
        let seconds = measure.as_secs_f64();
        println!(
            "| {name} | {} / {} | {:.0} / {:.0} | {:.0} / {:.0} | {:.0} | {:.0} | {} | {:.0} | {:.2} + {:.2} | {} |",
            direct.len(),
            via.len(),
            pct_us(&direct, 0.5),
            pct_us(&direct, 0.99),
            pct_us(&via, 0.5),
            pct_us(&via, 0.99),
            added(0.5),
            added(0.99),
            verdict(added(0.99) < TARGET_P99_US),
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
}

/// Sends a streamed miss every 1/`PROBE_RATE` s for `measure`, alternately to `uris[0]` and
/// `uris[1]`; the timings of each.
async fn probe(uris: [&http::Uri; 2], measure: Duration) -> [Vec<Timing>; 2] {
    let period = Duration::from_secs_f64(1.0 / PROBE_RATE);
    let clients: [HttpClient; 2] = [http_client(16), http_client(16)];
    let start = Instant::now();
    let mut requests = JoinSet::new();
    for i in 0u32.. {
        let at = start + period * i;
        if at >= start + measure {
            break;
        }
        tokio::time::sleep_until(at.into()).await;
        let side = (i % 2) as usize;
        let request = timed(
            clients[side].clone(),
            post(uris[side], miss_body(true)),
            true,
            at,
        );
        requests.spawn(async move { (side, request.await) });
    }
    let mut out = [Vec::new(), Vec::new()];
    let mut counts = [Counts::default(), Counts::default()];
    while let Some(joined) = requests.join_next().await {
        let (side, (timing, seen)) = joined.expect("probe");
        out[side].push(timing);
        counts[side].add(seen);
    }
    counts[0].check(Expect::Anything, "direct probes");
    counts[1].check(Expect::Miss, "deja probes");
    out
}
