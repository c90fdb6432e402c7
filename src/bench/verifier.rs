//! `deja bench verifier`: what the verifier model (`[cache.verify.model]`) costs per judged
//! candidate. Each pair of a pair file is judged through `ModelJudge` as a lookup does (the
//! hand-over to the model's thread included), one at a time; latency percentiles and the
//! process's resident memory before and after loading are reported, beside the rules
//! (`VerifyConfig::accepts`) on the same pairs, measured in the same run, as the baseline.
//!
//! A verdict costs the same whatever the weights say, so without a trained model at hand
//! `--random-like DIR` builds a cross-encoder of the shape of all-MiniLM-L6-v2 (6 layers, 384
//! wide: the size of the small public cross-encoders) with random weights and DIR's
//! tokenizer.

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};
use candle_transformers::models::bert::{BertModel, Config as BertConfig};
use serde_json::json;

use crate::cache::verify::{ModelJudge, ModelVerifyConfig, VerifyConfig};

#[derive(Debug, clap::Args)]
pub struct VerifierArgs {
    /// Pair file, JSON lines {"id","a","b","label"}: each (b, a) is judged once.
    #[arg(long, value_name = "FILE")]
    pub pairs: PathBuf,
    /// Judge only the first N pairs.
    #[arg(long, value_name = "N", default_value_t = 300)]
    pub limit: usize,
    /// The verifier model folder (config.json, tokenizer.json, model.safetensors).
    #[arg(long, value_name = "DIR", required_unless_present = "random_like")]
    pub model: Option<PathBuf>,
    /// Instead: a random-weight cross-encoder the size of all-MiniLM-L6-v2, with the
    /// tokenizer.json of DIR (e.g. models/all-MiniLM-L6-v2).
    #[arg(long, value_name = "DIR", conflicts_with = "model")]
    pub random_like: Option<PathBuf>,
    /// Where verifier-cost.md is written.
    #[arg(long, default_value = "benches/results")]
    pub out: PathBuf,
}

pub fn run(args: &VerifierArgs) -> Result<(), String> {
    let pairs = super::quality::read_pairs(&args.pairs, Some(args.limit))?;
    if pairs.is_empty() {
        return Err(format!("{}: no pairs", args.pairs.display()));
    }
    let scratch = Scratch::new()?;
    let (dir, what) = match (&args.model, &args.random_like) {
        (Some(dir), _) => (dir.clone(), format!("`{}`", dir.display())),
        (None, Some(like)) => {
            random_model(like, &scratch.0)?;
            (
                scratch.0.clone(),
                format!(
                    "random weights, the shape of all-MiniLM-L6-v2 (6 layers, 384 wide), \
                     tokenizer of `{}`",
                    like.display()
                ),
            )
        }
        (None, None) => return Err("--model or --random-like is required".into()),
    };

    // Baseline: the rules on the same pairs, in the same run.
    let rules = VerifyConfig::default();
    let mut rules_us = Vec::with_capacity(pairs.len());
    for pair in &pairs {
        let started = Instant::now();
        std::hint::black_box(rules.accepts(&pair.b, &pair.a));
        rules_us.push(started.elapsed().as_secs_f64() * 1e6);
    }

    let rss_before = resident_kib();
    let started = Instant::now();
    let judge = ModelJudge::start(&ModelVerifyConfig {
        enabled: true,
        dir,
        timeout_ms: 600_000,
        ..Default::default()
    });
    let load_ms = started.elapsed().as_secs_f64() * 1000.0;
    // One warm-up verdict (first-use allocations), then the measured ones.
    judge
        .score(&pairs[0].b, &pairs[0].a)
        .map_err(|e| e.to_string())?;
    let mut model_us = Vec::with_capacity(pairs.len());
    for pair in &pairs {
        let started = Instant::now();
        judge.score(&pair.b, &pair.a).map_err(|e| e.to_string())?;
        model_us.push(started.elapsed().as_secs_f64() * 1e6);
    }
    let rss_after = resident_kib();

    let (model, base) = (percentiles(&mut model_us), percentiles(&mut rules_us));
    let memory = match (rss_before, rss_after) {
        (Some(before), Some(after)) => format!(
            "{:.0} MiB resident after loading and judging ({:+.0} MiB over the {:.0} MiB before)",
            after as f64 / 1024.0,
            (after as f64 - before as f64) / 1024.0,
            before as f64 / 1024.0
        ),
        _ => "resident memory not readable here (/proc/self/status)".into(),
    };
    let report = format!(
        "## deja bench verifier\n\n\
         Model: {what}. {} pairs of `{}`, each judged once through `ModelJudge` (the model's \
         thread, one pair at a time). Loaded in {load_ms:.0} ms; {memory}. {} CPU threads \
         available.\n\n\
         | per judged candidate | p50 | p90 | p99 | max | mean |\n|---|---|---|---|---|---|\n\
         | model (µs) | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} |\n\
         | rules, the baseline (µs) | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |\n\n\
         The model costs {:.0}× the rules at the median; it runs only on a candidate that \
         passed the threshold and the rules, in place of an upstream call's hundreds of ms.\n",
        pairs.len(),
        args.pairs.display(),
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        model[0],
        model[1],
        model[2],
        model[3],
        model[4],
        base[0],
        base[1],
        base[2],
        base[3],
        base[4],
        model[0] / base[0].max(1e-3),
    );
    std::fs::create_dir_all(&args.out).map_err(|e| format!("{}: {e}", args.out.display()))?;
    let file = args.out.join("verifier-cost.md");
    std::fs::write(&file, &report).map_err(|e| format!("{}: {e}", file.display()))?;
    println!("{report}");
    Ok(())
}

/// p50, p90, p99, max and mean of `values`.
fn percentiles(values: &mut [f64]) -> [f64; 5] {
    values.sort_by(f64::total_cmp);
    let at = |q: f64| values[((values.len() - 1) as f64 * q).round() as usize];
    let mean = values.iter().sum::<f64>() / values.len() as f64;
    [at(0.5), at(0.9), at(0.99), at(1.0), mean]
}

/// VmRSS of this process in KiB (Linux).
fn resident_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Writes a one-output BERT cross-encoder of all-MiniLM-L6-v2's shape with random weights
/// into `out`, with the tokenizer of `like`.
fn random_model(like: &Path, out: &Path) -> Result<(), String> {
    let tokenizer = std::fs::read(like.join("tokenizer.json"))
        .map_err(|e| format!("{}: {e}", like.join("tokenizer.json").display()))?;
    let vocab = tokenizers::Tokenizer::from_bytes(&tokenizer)
        .map_err(|e| format!("tokenizer.json: {e}"))?
        .get_vocab_size(true);
    let config = json!({
        "model_type": "bert", "vocab_size": vocab, "hidden_size": 384,
        "num_hidden_layers": 6, "num_attention_heads": 12, "intermediate_size": 1536,
        "hidden_act": "gelu", "hidden_dropout_prob": 0.1, "max_position_embeddings": 512,
        "type_vocab_size": 2, "initializer_range": 0.02, "layer_norm_eps": 1e-12,
        "pad_token_id": 0, "id2label": {"0": "LABEL_0"}
    });
    let error = |e: candle_core::Error| format!("random model: {e}");
    let bert: BertConfig = serde_json::from_value(config.clone()).map_err(|e| e.to_string())?;
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    BertModel::load(vb.pp("bert"), &bert).map_err(error)?;
    candle_nn::linear(384, 384, vb.pp("bert.pooler.dense")).map_err(error)?;
    candle_nn::linear(384, 1, vb.pp("classifier")).map_err(error)?;
    varmap.save(out.join("model.safetensors")).map_err(error)?;
    std::fs::write(out.join("config.json"), config.to_string()).map_err(|e| e.to_string())?;
    std::fs::write(out.join("tokenizer.json"), tokenizer).map_err(|e| e.to_string())?;
    Ok(())
}

/// A folder for the random model, removed when done.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Result<Scratch, String> {
        let dir = std::env::temp_dir().join(format!("deja-bench-verifier-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        Ok(Scratch(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
