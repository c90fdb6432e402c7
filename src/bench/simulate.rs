//! `deja bench quality --simulate`: simulated traffic under the error budget. A seeded stream
//! of queries with repeats is replayed against the pairs, each query meeting its own pair's
//! stored question (the pair-by-pair view, cosine only). A pair's `a` is stored when first
//! asked; each later ask of its `b` stands for a fresh rewording (a miss is not stored for
//! the next asker), so hard pairs stay hard. A sample of semantic hits is
//! "shadow-judged" by the pair's label, and the budget (`crate::trust`, the code deja runs)
//! moves the threshold. The report shows the wrong-hit rate over time against the budget,
//! the hit rate it leaves, and the same stream at the fixed threshold for comparison.

use std::path::Path;

use plotters::prelude::*;
use serde::Serialize;

use super::metrics::Pair;
use crate::trust::TrustConfig;
use crate::trust::budget::Learned;
use crate::trust::estimate::{Sample, Window};
use crate::trust::judge::cosine;

/// Points on the time axis of the report.
const BUCKETS: usize = 20;

/// What a simulation is run with.
#[derive(Debug, Clone, Serialize)]
pub struct Setup {
    /// Pairs in the file (as read, after `--limit`).
    pub pairs: usize,
    pub events: usize,
    pub budget: f64,
    pub sample_rate: f64,
    /// The configured threshold (the floor the budget never goes under).
    pub floor: f32,
    pub seed: u64,
    #[serde(skip)]
    pub trust: TrustConfig,
}

/// One stretch of the stream.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Bucket {
    pub until_event: usize,
    pub semantic_hits: u64,
    pub wrong_hits: u64,
    /// Rewordings asked (label 1) and how many were answered.
    pub rewordings: u64,
    pub rewordings_hit: u64,
    pub threshold: f32,
}

impl Bucket {
    pub fn wrong_rate(&self) -> f64 {
        ratio(self.wrong_hits, self.semantic_hits)
    }

    pub fn hit_rate(&self) -> f64 {
        ratio(self.rewordings_hit, self.rewordings)
    }
}

/// A whole run.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    pub budgeted: bool,
    pub buckets: Vec<Bucket>,
    pub total: Bucket,
    pub threshold_changes: u64,
    pub shadow_samples: u64,
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 { 0.0 } else { a as f64 / b as f64 }
}

/// splitmix64: a seeded stream, the same on every machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Replays the stream once, with the budget (`budgeted`) or at the fixed floor.
pub fn run(pairs: &[Pair], similarity: &[f32], setup: &Setup, budgeted: bool) -> Run {
    let mut rng = Rng(setup.seed);
    let mut stored_a = vec![false; pairs.len()];
    let (mut window, mut learned) = (Window::default(), Learned::default());
    let bucket_len = setup.events.div_ceil(BUCKETS).max(1);
    let mut buckets = Vec::new();
    let mut current = Bucket::default();
    let (mut judged, mut samples) = (0u64, 0u64);
    for event in 0..setup.events {
        // Popular questions come back often: index ~ n·u² (a few pairs take most traffic).
        let i = ((rng.unit().powi(2)) * pairs.len() as f64) as usize % pairs.len();
        let threshold = if budgeted {
            learned.effective(setup.floor)
        } else {
            setup.floor
        };
        let ask_b = rng.unit() < 0.5;
        if !stored_a[i] {
            stored_a[i] = true;
        } else if ask_b {
            let pair = &pairs[i];
            if pair.label == 1 {
                current.rewordings += 1;
            }
            if similarity[i] >= threshold {
                let wrong = pair.label != 1;
                current.semantic_hits += 1;
                current.wrong_hits += u64::from(wrong);
                current.rewordings_hit += u64::from(!wrong);
                // Every 1/rate-th hit is judged, as deja samples them.
                let n = judged;
                judged += 1;
                let rate = setup.sample_rate;
                if budgeted && ((n + 1) as f64 * rate).floor() > (n as f64 * rate).floor() {
                    samples += 1;
                    let sample = Sample {
                        similarity: similarity[i],
                        wrong,
                    };
                    window.push(sample, setup.trust.window);
                    // One event per second of simulated time.
                    let now_ms = event as u64 * 1000;
                    learned.adjust(&window, setup.floor, setup.budget, &setup.trust, now_ms);
                }
            }
        }
        if (event + 1) % bucket_len == 0 || event + 1 == setup.events {
            current.until_event = event + 1;
            current.threshold = if budgeted {
                learned.effective(setup.floor)
            } else {
                setup.floor
            };
            buckets.push(std::mem::take(&mut current));
        }
    }
    let mut total = Bucket::default();
    for b in &buckets {
        total.semantic_hits += b.semantic_hits;
        total.wrong_hits += b.wrong_hits;
        total.rewordings += b.rewordings;
        total.rewordings_hit += b.rewordings_hit;
    }
    total.until_event = setup.events;
    total.threshold = buckets.last().map_or(setup.floor, |b| b.threshold);
    Run {
        budgeted,
        buckets,
        total,
        threshold_changes: learned.changes,
        shadow_samples: samples,
    }
}

/// The markdown report of both runs.
pub fn markdown(name: &str, setup: &Setup, budget: &Run, fixed: &Run) -> String {
    let mut md = format!(
        "# Simulated traffic under an error budget: {name}\n\n\
         {} pairs, {} queries, seed {}; budget (`cache.max_wrong_rate`) {:.1}%, {:.0}% of semantic hits \
         shadow-judged (the label stands in for the judge); configured threshold {:.2}; \
         budget moves of {:.2} at most every {} queries, after {} judged hits.\n\n",
        setup.pairs,
        setup.events,
        setup.seed,
        setup.budget * 100.0,
        setup.sample_rate * 100.0,
        setup.floor,
        setup.trust.step,
        setup.trust.adjust_interval_secs,
        setup.trust.min_samples,
    );
    md.push_str("| run | semantic hits | wrong | wrong-hit rate | rewordings answered | final threshold | changes | judged |\n|---|---|---|---|---|---|---|---|\n");
    for (label, run) in [("fixed threshold", fixed), ("with the budget", budget)] {
        let t = &run.total;
        md.push_str(&format!(
            "| {label} | {} | {} | {:.2}% | {:.1}% | {:.2} | {} | {} |\n",
            t.semantic_hits,
            t.wrong_hits,
            t.wrong_rate() * 100.0,
            t.hit_rate() * 100.0,
            t.threshold,
            run.threshold_changes,
            run.shadow_samples,
        ));
    }
    md.push_str("\nOver time (with the budget; the fixed run's wrong-hit rate beside it):\n\n| until query | threshold | wrong-hit rate | fixed: wrong-hit rate | rewordings answered | fixed: answered |\n|---|---|---|---|---|---|\n");
    for (b, f) in budget.buckets.iter().zip(&fixed.buckets) {
        md.push_str(&format!(
            "| {} | {:.2} | {:.2}% | {:.2}% | {:.1}% | {:.1}% |\n",
            b.until_event,
            b.threshold,
            b.wrong_rate() * 100.0,
            f.wrong_rate() * 100.0,
            b.hit_rate() * 100.0,
            f.hit_rate() * 100.0,
        ));
    }
    md
}

/// Wrong-hit rate over time (budget, fixed, the budget line) and the threshold.
pub fn svg(name: &str, setup: &Setup, budget: &Run, fixed: &Run) -> Result<String, String> {
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (900, 480)).into_drawing_area();
        let fail = |e: DrawingAreaErrorKind<_>| e.to_string();
        root.fill(&WHITE).map_err(fail)?;
        let top = budget
            .buckets
            .iter()
            .chain(&fixed.buckets)
            .map(|b| b.wrong_rate() as f32)
            .fold(setup.budget as f32 * 2.0, f32::max);
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!("{name}: wrong-hit rate over time"),
                ("sans-serif", 20),
            )
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(56)
            .right_y_label_area_size(56)
            .build_cartesian_2d(0f32..setup.events as f32, 0f32..top * 1.1)
            .map_err(fail)?
            .set_secondary_coord(0f32..setup.events as f32, 0.5f32..1.0f32);
        chart
            .configure_mesh()
            .x_desc("queries")
            .y_desc("wrong hits / semantic hits")
            .y_label_formatter(&|y| format!("{:.1}%", y * 100.0))
            .draw()
            .map_err(fail)?;
        chart
            .configure_secondary_axes()
            .y_desc("threshold (green)")
            .draw()
            .map_err(fail)?;
        let series = |run: &Run| -> Vec<(f32, f32)> {
            run.buckets
                .iter()
                .map(|b| (b.until_event as f32, b.wrong_rate() as f32))
                .collect()
        };
        let red = RGBColor(214, 39, 40);
        chart
            .draw_series(LineSeries::new(series(budget), red.stroke_width(2)))
            .map_err(fail)?
            .label("with the budget")
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], red));
        let grey = RGBColor(120, 120, 120);
        chart
            .draw_series(DashedLineSeries::new(
                series(fixed),
                6,
                4,
                grey.stroke_width(2),
            ))
            .map_err(fail)?
            .label("fixed threshold")
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], grey));
        let line = vec![
            (0f32, setup.budget as f32),
            (setup.events as f32, setup.budget as f32),
        ];
        chart
            .draw_series(DashedLineSeries::new(line, 3, 3, BLACK.stroke_width(1)))
            .map_err(fail)?
            .label("budget")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK));
        let green = RGBColor(44, 160, 44);
        let thresholds: Vec<(f32, f32)> = budget
            .buckets
            .iter()
            .map(|b| (b.until_event as f32, b.threshold))
            .collect();
        chart
            .draw_secondary_series(LineSeries::new(thresholds, green.stroke_width(2)))
            .map_err(fail)?;
        chart
            .configure_series_labels()
            .border_style(BLACK)
            .background_style(WHITE)
            .draw()
            .map_err(fail)?;
        root.present().map_err(fail)?;
    }
    Ok(out)
}

/// Runs both and writes quality-NAME-simulate.{md,json,svg} under `out`; returns the markdown.
pub fn write(
    out: &Path,
    name: &str,
    pairs: &[Pair],
    vectors: &std::collections::HashMap<String, Vec<f32>>,
    setup: &Setup,
) -> Result<String, String> {
    let similarity: Vec<f32> = pairs
        .iter()
        .map(|p| match (vectors.get(&p.a), vectors.get(&p.b)) {
            (Some(a), Some(b)) => cosine(a, b),
            _ => 0.0,
        })
        .collect();
    let setup = &Setup {
        pairs: pairs.len(),
        ..setup.clone()
    };
    let budget = run(pairs, &similarity, setup, true);
    let fixed = run(pairs, &similarity, setup, false);
    let md = markdown(name, setup, &budget, &fixed);
    let base = out.join(format!("quality-{name}-simulate"));
    let json = serde_json::json!({"setup": setup, "with_budget": budget, "fixed": fixed});
    let write = |ext: &str, text: &str| {
        let path = base.with_extension(ext);
        std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))
    };
    write("md", &md)?;
    write(
        "json",
        &serde_json::to_string_pretty(&json).map_err(|e| e.to_string())?,
    )?;
    write("svg", &svg(name, setup, &budget, &fixed)?)?;
    Ok(md)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(label: u8) -> Pair {
        Pair {
            id: String::new(),
            a: String::new(),
            b: String::new(),
            label,
            source: String::new(),
        }
    }

    #[test]
    fn the_budget_cuts_wrong_hits_that_a_fixed_threshold_serves() {
        // Wrong pairs sit at 0.85, right ones at 0.95: a floor of 0.8 serves both.
        let pairs: Vec<Pair> = (0..200).map(|i| pair(u8::from(i % 2 == 0))).collect();
        let similarity: Vec<f32> = pairs
            .iter()
            .map(|p| if p.label == 1 { 0.95 } else { 0.85 })
            .collect();
        let setup = Setup {
            pairs: pairs.len(),
            events: 20_000,
            budget: 0.02,
            sample_rate: 0.5,
            floor: 0.8,
            seed: 18,
            trust: TrustConfig {
                min_samples: 10,
                adjust_interval_secs: 10,
                step: 0.02,
                ..TrustConfig::default()
            },
        };
        let fixed = run(&pairs, &similarity, &setup, false);
        let budget = run(&pairs, &similarity, &setup, true);
        assert!(fixed.total.wrong_rate() > 0.2, "{:?}", fixed.total);
        let last = budget.buckets.last().unwrap();
        assert!(last.threshold > 0.85, "{last:?}");
        assert!(
            budget.total.wrong_rate() < fixed.total.wrong_rate() / 5.0,
            "{:?}",
            budget.total
        );
        // The right rewordings still hit.
        assert!(last.hit_rate() > 0.9, "{last:?}");
    }
}
