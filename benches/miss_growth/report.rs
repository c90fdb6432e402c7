//! The tables: per window, per size band.

use super::*;

pub(crate) fn print_windows(run: &Run) {
    let name = if run.semantic { "on" } else { "off" };
    println!("\n## Semantic tier {name}: per 1-second window\n");
    println!(
        "{} requests answered, {} not a miss; {} embedding calls to the fake.\n",
        run.windows.last().map_or(0, |w| w.entries),
        run.not_miss,
        run.embed_calls
    );
    println!(
        "| t (s) | entries | misses/s | p50 (ms) | p99 (ms) | max (ms) | cores busy | fake embedding CPU (ms) | index pending | index deferred |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for w in &run.windows {
        println!(
            "| {:.0} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {:.0} | {} | {} |",
            w.at,
            w.entries,
            w.latencies_us.len() as f64 / w.seconds,
            pct(&w.latencies_us, 0.5) / 1e3,
            pct(&w.latencies_us, 0.99) / 1e3,
            pct(&w.latencies_us, 1.0) / 1e3,
            w.process_cpu / w.seconds,
            w.embed_cpu * 1e3,
            w.pending,
            w.deferred,
        );
    }
    let worst = run
        .windows
        .iter()
        .filter(|w| !w.latencies_us.is_empty())
        .map(|w| (pct(&w.latencies_us, 0.99), w.at))
        .fold((0.0, 0.0), |a, b| if b.0 > a.0 { b } else { a });
    let over = run
        .windows
        .iter()
        .filter(|w| pct(&w.latencies_us, 0.99) > 50_000.0)
        .count();
    println!(
        "\nWorst window p99: {:.2} ms (at {:.0} s); windows with p99 > 50 ms: {over} of {}. Run: \
         {:.1} s.\n",
        worst.0 / 1e3,
        worst.1,
        run.windows.len(),
        run.windows.last().map_or(0.0, |w| w.at),
    );
    let (all, embed) = cpu_per_miss(run);
    println!(
        "CPU per miss over the run (the whole process: deja, the fake upstream and the load \
         generator): {all:.0} µs, of which the fake's embedding work {embed:.0} µs.\n"
    );
}

/// CPU time of the whole process per miss over the run, and the fake's embedding share, in
/// µs. On a shared machine this moves less than a rate does: other tenants take wall time,
/// not this process's CPU time.
fn cpu_per_miss(run: &Run) -> (f64, f64) {
    let misses = run.windows.last().map_or(0, |w| w.entries).max(1) as f64;
    let total = |cpu: fn(&Window) -> f64| run.windows.iter().map(cpu).sum::<f64>() / misses * 1e6;
    (total(|w| w.process_cpu), total(|w| w.embed_cpu))
}

/// Per size band: both rates, the embedding cost and the ratio, raw and adjusted.
pub(crate) fn print_bands(runs: &[Run], cores: usize) {
    let off = runs.iter().find(|r| !r.semantic);
    let on = runs.iter().find(|r| r.semantic);
    println!("## Per size band (a tenth of the run each)\n");
    println!(
        "Adjusted: the semantic-on rate with the fake's embedding CPU taken out (band time minus \
         embedding CPU / {cores} cores).\n"
    );
    if let (Some(off), Some(on)) = (off, on) {
        let ((off_all, off_embed), (on_all, on_embed)) = (cpu_per_miss(off), cpu_per_miss(on));
        println!(
            "CPU per miss, whole run, the fake's embedding work taken out: off {:.0} µs, on \
             {:.0} µs; off ÷ on **{:.2}** (the ratio a CPU-bound machine would give).\n",
            off_all - off_embed,
            on_all - on_embed,
            (off_all - off_embed) / (on_all - on_embed)
        );
    }
    println!(
        "| entries | off misses/s | off p99 (ms) | on misses/s | on p99 (ms) | fake embedding CPU per miss (µs) | on adjusted misses/s | ratio on/off | ratio adjusted |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let rate = |run: Option<&Run>, i: usize| -> Option<(f64, f64, f64)> {
        let run = run?;
        let (start, embed_start) = *run.bands.get(i)?;
        let (end, embed_end) = *run.bands.get(i + 1)?;
        let n = run.band_latencies.get(i)?.len() as f64;
        let seconds = (end - start).as_secs_f64();
        let embed = embed_end - embed_start;
        Some((
            n / seconds,
            n / (seconds - embed / cores as f64),
            embed / n * 1e6,
        ))
    };
    let p99 = |run: Option<&Run>, i: usize| {
        run.and_then(|r| r.band_latencies.get(i))
            .map_or(f64::NAN, |l| pct(l, 0.99) / 1e3)
    };
    let band_size = runs.first().map_or(0, |r| {
        r.band_latencies.iter().map(Vec::len).sum::<usize>() / BANDS
    });
    for i in 0..BANDS {
        let off_rate = rate(off, i);
        let on_rate = rate(on, i);
        let fmt =
            |v: Option<f64>, digits: usize| v.map_or("–".into(), |v| format!("{v:.digits$}"));
        println!(
            "| {}–{} | {} | {:.2} | {} | {:.2} | {} | {} | {} | {} |",
            i * band_size,
            (i + 1) * band_size,
            fmt(off_rate.map(|r| r.0), 0),
            p99(off, i),
            fmt(on_rate.map(|r| r.0), 0),
            p99(on, i),
            fmt(on_rate.map(|r| r.2), 0),
            fmt(on_rate.map(|r| r.1), 0),
            fmt(off_rate.zip(on_rate).map(|(f, n)| n.0 / f.0), 2),
            fmt(off_rate.zip(on_rate).map(|(f, n)| n.1 / f.0), 2),
        );
    }
}
