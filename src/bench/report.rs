//! One pair file's results: the JSON kept in `benches/results/`, and its markdown form.

use std::fmt::Write;
use std::path::Path;

use serde::Serialize;

use super::metrics::{self, Choice, Judged, Mode, Pair, Row};
use super::quality::{Layout, Timings};
use crate::cache::verify::VerifyConfig;
use crate::config::Config;

/// GPTCache's published results on gptcache-mock (its own score, not cosine):
/// (its setting, right, wrong, miss).
pub const GPTCACHE: [(&str, usize, usize, usize); 2] =
    [("0.95", 425, 25, 549), ("0.9", 804, 77, 118)];

#[derive(Debug, Serialize)]
pub struct Report {
    pub name: String,
    pub file: String,
    pub pairs: usize,
    pub label1: usize,
    pub label0: usize,
    pub embedder: String,
    /// One scope for every `a`, or each pair alone.
    pub layout: Layout,
    pub verify: VerifyConfig,
    pub hnsw_min_entries: usize,
    pub timings: Timings,
    /// Queries whose text was cached verbatim (the exact tier answers them in both caches).
    pub exact_queries: usize,
    /// Every query.
    pub all: View,
    /// Only the queries the exact tier did not answer: what the semantic tier decides.
    pub semantic_tier: View,
    /// deja's counts where its hit count is closest to GPTCache's (gptcache-mock only).
    pub gptcache: Vec<Matched>,
}

#[derive(Debug, Serialize)]
pub struct View {
    pub cosine: Vec<Row>,
    pub verified: Vec<Row>,
    pub cosine_choice: Choice,
    pub verified_choice: Choice,
    /// Verification at the threshold where cosine alone keeps a 50% hit rate.
    pub verified_at_cosine_half: Option<Row>,
}

impl View {
    fn new(judged: &[Judged]) -> View {
        let cosine = metrics::sweep(judged, Mode::Cosine);
        let verified = metrics::sweep(judged, Mode::Verified);
        let cosine_choice = metrics::choose(&cosine);
        let verified_choice = metrics::choose(&verified);
        let verified_at_cosine_half = cosine_choice
            .half_hit_rate
            .and_then(|row| verified.iter().find(|v| v.threshold == row.threshold))
            .copied();
        View {
            cosine,
            verified,
            cosine_choice,
            verified_choice,
            verified_at_cosine_half,
        }
    }

    fn rows(&self, mode: Mode) -> &[Row] {
        match mode {
            Mode::Cosine => &self.cosine,
            Mode::Verified => &self.verified,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Matched {
    pub gptcache_setting: String,
    pub gptcache: [usize; 3],
    pub mode: Mode,
    pub row: Row,
}

/// What one measurement of a pair file gave: every query judged, and how it ran.
pub struct Measured<'a> {
    pub judged: &'a [Judged],
    pub timings: Timings,
    pub layout: Layout,
}

impl Report {
    pub fn new(
        name: &str,
        path: &Path,
        pairs: &[Pair],
        embedder: &str,
        config: &Config,
        measured: Measured,
    ) -> Report {
        let Measured {
            judged,
            timings,
            layout,
        } = measured;
        let label1 = pairs.iter().filter(|p| p.label == 1).count();
        let semantic: Vec<Judged> = judged.iter().filter(|j| !j.exact).copied().collect();
        let all = View::new(judged);
        let mut gptcache = Vec::new();
        if !pairs.is_empty() && pairs.iter().all(|p| p.source == "gptcache-mock") {
            for (setting, right, wrong, miss) in GPTCACHE {
                for mode in Mode::BOTH {
                    if let Some(row) = metrics::closest_hits(all.rows(mode), right + wrong) {
                        gptcache.push(Matched {
                            gptcache_setting: setting.into(),
                            gptcache: [right, wrong, miss],
                            mode,
                            row,
                        });
                    }
                }
            }
        }
        Report {
            name: name.into(),
            file: path.display().to_string(),
            pairs: pairs.len(),
            label1,
            label0: pairs.len() - label1,
            embedder: embedder.into(),
            layout,
            verify: config.cache.verify.clone(),
            hnsw_min_entries: config.cache.hnsw_min_entries,
            timings,
            exact_queries: judged.len() - semantic.len(),
            all,
            semantic_tier: View::new(&semantic),
            gptcache,
        }
    }

    /// The report as markdown; `full` lists every threshold, otherwise a selection.
    pub fn markdown(&self, full: bool) -> String {
        let mut md = String::new();
        let t = &self.timings;
        let _ = writeln!(md, "## deja bench quality: {}\n", self.name);
        let _ = writeln!(
            md,
            "`{}`: {} pairs ({} label 1, {} label 0). Every `a` stored as a chat request \
             ({} entries, {}), every `b` looked up: exact tier, then semantic. \
             Embedder `{}`. {} of {} queries repeat a stored text verbatim and hit the exact \
             tier in both modes. Verification: {}. Store {:.0} ms; lookups {:.0} ms cosine \
             only, {:.0} ms verified.\n",
            self.file,
            self.pairs,
            self.label1,
            self.label0,
            t.entries,
            match self.layout {
                Layout::Simulation => "in one scope",
                Layout::Pairwise => "each pair in a scope of its own",
            },
            self.embedder,
            self.exact_queries,
            self.pairs,
            verify_summary(&self.verify),
            t.insert_ms,
            t.lookup_cosine_ms,
            t.lookup_verified_ms,
        );
        let _ = writeln!(
            md,
            "Hit rate = right hits on label-1 queries / label-1 queries. A hit is right or wrong \
             when the file labels the stored text against the query (its own pair, or another \
             pair that links the two texts), and unlabelled otherwise. Wrong-hit rate = hits \
             not known to be right (wrong and unlabelled) / all queries. Precision = right / all \
             hits (unlabelled counted as wrong); labelled precision = right / (right + wrong), \
             unlabelled hits left out. F0.5 (of precision and hit rate) weighs precision twice \
             as much as hit rate.\n"
        );
        let _ = writeln!(md, "{}\n", layout_summary(self.layout));
        let mut views = vec![("all queries", &self.all)];
        // Without exact repeats, the semantic tier answers every query: the same figures.
        if self.exact_queries > 0 {
            views.push((
                "semantic tier only (queries without a verbatim copy)",
                &self.semantic_tier,
            ));
        }
        for (title, view) in views {
            let _ = writeln!(md, "### Thresholds worth picking: {title}\n");
            choices(&mut md, view);
            if full || std::ptr::eq(view, &self.all) {
                let _ = writeln!(md, "\n### Sweep: {title}\n");
                sweep_table(&mut md, view, full);
            }
            md.push('\n');
        }
        if !self.gptcache.is_empty() {
            gptcache_table(&mut md, &self.gptcache);
        }
        md
    }
}

fn layout_summary(layout: Layout) -> &'static str {
    match layout {
        Layout::Simulation => {
            "Cache simulation: every `a` is stored in one scope, so a query can land on any \
             pair's text."
        }
        Layout::Pairwise => {
            "Pair by pair: each pair alone in its own scope, so a query meets only its own `a` \
             (no unlabelled hits)."
        }
    }
}

fn verify_summary(v: &VerifyConfig) -> String {
    let on: Vec<&str> = [
        ("numbers", v.numbers),
        ("negation", v.negation),
        ("names", v.entities),
        ("word order", v.word_order),
    ]
    .into_iter()
    .filter(|&(_, on)| on)
    .map(|(name, _)| name)
    .collect();
    let rules = if on.is_empty() {
        "no check enabled".into()
    } else {
        on.join(", ")
    };
    // `[cache.verify.model]` on: the "verified" column is rules + model.
    if v.model.enabled {
        format!(
            "{rules}, then the model {} (accept ≥ {}, lower bound {})",
            v.model.dir.display(),
            v.model.accept,
            v.model
                .lower_bound
                .map_or("the threshold".into(), |b| b.to_string())
        )
    } else {
        rules
    }
}

fn pct(x: f64) -> String {
    format!("{:.1}%", x * 100.0)
}

fn precision(row: &Row) -> String {
    row.precision.map_or("–".into(), pct)
}

fn labelled_precision(row: &Row) -> String {
    row.labelled_precision.map_or("–".into(), pct)
}

fn describe(row: Option<Row>) -> String {
    row.map_or("none".into(), |r| {
        format!(
            "**{:.2}**: hit rate {}, wrong {} + unlabelled {} ({}), precision {} (labelled {}), \
             F0.5 {:.3}",
            r.threshold,
            pct(r.hit_rate),
            r.wrong,
            r.unlabelled,
            pct(r.wrong_rate),
            precision(&r),
            labelled_precision(&r),
            r.f05
        )
    })
}

fn choices(md: &mut String, view: &View) {
    let _ = writeln!(md, "| pick | cosine only | verified |\n|---|---|---|");
    let (c, v) = (&view.cosine_choice, &view.verified_choice);
    let lines = [
        ("best F0.5", c.best_f05, v.best_f05),
        (
            "lowest with precision ≥ 95%",
            c.precision_95,
            v.precision_95,
        ),
        (
            "highest with hit rate ≥ 50%",
            c.half_hit_rate,
            v.half_hit_rate,
        ),
    ];
    for (pick, cosine, verified) in lines {
        let _ = writeln!(
            md,
            "| {pick} | {} | {} |",
            describe(cosine),
            describe(verified)
        );
    }
    if let (Some(cosine), Some(verified)) = (c.half_hit_rate, view.verified_at_cosine_half) {
        let _ = writeln!(
            md,
            "| verified at cosine's 50% threshold | | {} |",
            describe(Some(verified))
        );
        if let Some(v) = v.half_hit_rate {
            let _ = writeln!(
                md,
                "\nAt a hit rate of at least 50%: {} wrong hits cosine only ({:.2}), {} verified \
                 ({:.2}): {}.",
                cosine.wrong,
                cosine.threshold,
                v.wrong,
                v.threshold,
                change(cosine.wrong, v.wrong)
            );
        }
    }
}

fn change(before: usize, after: usize) -> String {
    if before == 0 {
        return "no wrong hits to remove".into();
    }
    let cut = 1.0 - after as f64 / before as f64;
    format!("{} fewer", pct(cut))
}

fn sweep_table(md: &mut String, view: &View, full: bool) {
    let _ = writeln!(
        md,
        "| threshold | hit rate | wrong rate | precision | labelled | F0.5 \
         | right/wrong/unlabelled/miss | hit rate ✓ | wrong rate ✓ | precision ✓ | labelled ✓ \
         | F0.5 ✓ | right/wrong/unlabelled/miss ✓ |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for (c, v) in view.cosine.iter().zip(&view.verified) {
        let pick = (c.threshold * 100.0).round() as u32;
        if !(full || pick.is_multiple_of(5) || pick >= 90) {
            continue;
        }
        let _ = writeln!(
            md,
            "| {:.2} | {} | {} | {} | {} | {:.3} | {}/{}/{}/{} | {} | {} | {} | {} | {:.3} \
             | {}/{}/{}/{} |",
            c.threshold,
            pct(c.hit_rate),
            pct(c.wrong_rate),
            precision(c),
            labelled_precision(c),
            c.f05,
            c.right,
            c.wrong,
            c.unlabelled,
            c.miss,
            pct(v.hit_rate),
            pct(v.wrong_rate),
            precision(v),
            labelled_precision(v),
            v.f05,
            v.right,
            v.wrong,
            v.unlabelled,
            v.miss,
        );
    }
    let _ = writeln!(md, "\n✓ = verified.");
}

fn gptcache_table(md: &mut String, matched: &[Matched]) {
    let _ = writeln!(
        md,
        "### Side by side with GPTCache's published table\n\n\
         GPTCache's own benchmark on the same 999 pairs (ONNX paraphrase-albert, its own \
         score). deja rows are at the threshold where its hit count is closest to GPTCache's. \
         Every pair is a paraphrase, so a wrong hit is a hit on another pair's text; many of \
         those texts are near-duplicates of the right one.\n\n\
         | | threshold | hits | right | wrong (+ unlabelled) | miss |\n|---|---|---|---|---|---|"
    );
    let mut last = "";
    for m in matched {
        if m.gptcache_setting != last {
            let [right, wrong, miss] = m.gptcache;
            let _ = writeln!(
                md,
                "| GPTCache | {} | {} | {right} | {wrong} | {miss} |",
                m.gptcache_setting,
                right + wrong
            );
            last = &m.gptcache_setting;
        }
        let r = &m.row;
        let _ = writeln!(
            md,
            "| deja, {} | {:.2} | {} | {} | {} + {} | {} |",
            m.mode.name(),
            r.threshold,
            r.hits(),
            r.right,
            r.wrong,
            r.unlabelled,
            r.miss
        );
    }
}
