//! `deja bench ...`: measurements that run deja's own code on recorded data.
//!
//! - `quality`: labelled paraphrase pairs through the real chat planning and cache
//! - `e2e`: the same pairs through a running deja over HTTP, against a fake upstream
//! - `metrics`: right/wrong/miss, the threshold sweep and the thresholds worth picking
//! - `report`: markdown, JSON and the table printed on stdout
//! - `plot`: hit rate and wrong-hit rate against the threshold, as SVG
//! - `simulate`: simulated traffic under the error budget (`--simulate`)
//! - `verifier`: the verifier model's cost per judged candidate (latency, memory)

mod e2e;
mod metrics;
mod plot;
mod quality;
mod report;
mod simulate;
#[cfg(feature = "local-embeddings")]
pub mod verifier;

use std::collections::HashMap;
use std::io::{BufRead, BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::cache::verify::ModelJudge;
use crate::config::{Config, EmbeddingProvider};
use crate::embed::Embedder;
use metrics::Pair;
use quality::Layout;
use report::Report;

#[derive(Debug, clap::Subcommand)]
pub enum BenchCommand {
    /// Hit rate and wrong hits on labelled paraphrase pairs, with and without verification.
    // Boxed: its many flags would make every command as large.
    Quality(Box<QualityArgs>),
    /// What the verifier model costs per judged candidate: latency and memory.
    #[cfg(feature = "local-embeddings")]
    Verifier(verifier::VerifierArgs),
}

#[derive(Debug, clap::Args)]
pub struct QualityArgs {
    /// Pair file, JSON lines {"id","a","b","label"}; repeat for several. `NAME=PATH` names
    /// the outputs (quality-NAME.*); otherwise `paws-wiki/dev.jsonl` gives `paws-dev` and
    /// `gptcache-mock/pairs.jsonl` gives `gptcache-mock`.
    #[arg(long = "pairs", required = true, value_name = "FILE")]
    pub pairs: Vec<String>,
    /// Where quality-NAME.{md,json,svg} are written.
    #[arg(long, default_value = "benches/results")]
    pub out: PathBuf,
    /// Read only the first N pairs of each file.
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Embed with the local model in DIR (`embedding.provider = "local"`).
    #[arg(long, value_name = "DIR", default_value = "models/all-MiniLM-L6-v2")]
    pub local_model: PathBuf,
    /// Embed with the config's `[embedding]` section as it is, instead of `--local-model`.
    #[arg(long)]
    pub config_embedding: bool,
    /// Keep embeddings in FILE between runs (JSON lines), e.g. while tuning verification.
    #[arg(long, value_name = "FILE")]
    pub vectors: Option<PathBuf>,
    /// Also write every query's answers to quality-NAME.answers.jsonl.
    #[arg(long)]
    pub dump: bool,
    /// Instead: start deja and a fake upstream, send every `a` then every `b` over HTTP, and
    /// count the upstream calls saved (quality-NAME-e2e.{md,json}).
    #[arg(long)]
    pub e2e: bool,
    /// Store each pair alone in its own scope, so a query meets only its own `a` (the
    /// pair-classification view); outputs are named quality-NAME-pairwise.*. Without it,
    /// every `a` shares one scope, as an app's traffic would fill the cache.
    #[arg(long, conflicts_with = "e2e")]
    pub pairwise: bool,
    /// Instead: replay a seeded stream of queries with repeats, the labels standing in for
    /// the shadow judge, with and without the error budget (quality-NAME-simulate.*).
    #[arg(long, conflicts_with_all = ["e2e", "pairwise"])]
    pub simulate: bool,
    /// `--simulate`: the budget (default: `cache.max_wrong_rate`, else 0.05).
    #[arg(long, value_name = "RATE", requires = "simulate")]
    pub budget: Option<f64>,
    /// `--simulate`: queries in the stream.
    #[arg(long, default_value_t = 50_000, requires = "simulate")]
    pub events: usize,
    /// `--simulate`: share of semantic hits judged (default: `shadow_sample_rate`, else 0.2).
    #[arg(long, value_name = "RATE", requires = "simulate")]
    pub sample_rate: Option<f64>,
    /// `--simulate`: the configured threshold, the budget's floor (default: the config's).
    #[arg(long, value_name = "T", requires = "simulate")]
    pub floor: Option<f32>,
    /// Run the verifier model of DIR after the rules in the "verified" cache
    /// (`cache.verify.model.enabled` and `dir`); the report says so.
    #[arg(long, value_name = "DIR", conflicts_with = "e2e")]
    pub verifier_model: Option<PathBuf>,
    /// `cache.verify.model.accept` for this run.
    #[arg(long, value_name = "SCORE", conflicts_with = "e2e")]
    pub verifier_accept: Option<f32>,
    /// `--e2e`: the similarity threshold deja runs with (default: the config's).
    #[arg(long, value_name = "T", requires = "e2e")]
    pub threshold: Option<f32>,
}

pub async fn run(command: BenchCommand, config_path: &Path) -> Result<(), String> {
    match command {
        BenchCommand::Quality(args) => quality_run(*args, config_path).await,
        #[cfg(feature = "local-embeddings")]
        BenchCommand::Verifier(args) => tokio::task::spawn_blocking(move || verifier::run(&args))
            .await
            .map_err(|e| e.to_string())?,
    }
}

/// Output name for a `--pairs` argument, and the file it names.
pub fn name_and_path(arg: &str) -> (String, PathBuf) {
    if let Some((name, path)) = arg.split_once('=') {
        return (name.to_string(), PathBuf::from(path));
    }
    let path = PathBuf::from(arg);
    let stem = path
        .file_stem()
        .map_or("pairs".into(), |s| s.to_string_lossy().into_owned());
    let parent = path
        .parent()
        .and_then(Path::file_name)
        .map(|s| s.to_string_lossy().into_owned());
    let name = match parent {
        Some(parent) if stem == "pairs" => parent,
        Some(parent) => format!("{}-{stem}", parent.split('-').next().unwrap_or(&parent)),
        None => stem,
    };
    (name, path)
}

async fn quality_run(args: QualityArgs, config_path: &Path) -> Result<(), String> {
    let mut config = Config::load(config_path).map_err(|e| e.to_string())?;
    if !args.config_embedding {
        config.embedding.provider = EmbeddingProvider::Local;
        config.embedding.model_dir = args.local_model.clone();
    }
    // Thousands of prompts wait in the queue at once: waiting is not the model being slow.
    config.embedding.timeout_ms = config.embedding.timeout_ms.max(600_000);
    if args.e2e {
        if let Some(threshold) = args.threshold {
            config.cache.similarity_threshold = threshold;
        }
        config.validate().map_err(|e| e.to_string())?;
        return e2e_run(&args, &config).await;
    }
    if let Some(dir) = &args.verifier_model {
        config.cache.verify.model.enabled = true;
        config.cache.verify.model.dir = dir.clone();
    }
    if let Some(accept) = args.verifier_accept {
        config.cache.verify.model.accept = accept;
    }
    // The sweep decides every threshold from one lookup, which holds while the model's verdict
    // does not depend on the threshold: it judges every candidate above each threshold.
    if config.cache.verify.model.lower_bound.take().is_some() {
        eprintln!(
            "bench: cache.verify.model.lower_bound ignored (the sweep judges every candidate)"
        );
    }
    // Every verdict is waited for: a timeout would measure this machine's load, not the model.
    config.cache.verify.model.timeout_ms = config.cache.verify.model.timeout_ms.max(600_000);
    config.validate().map_err(|e| e.to_string())?;
    // A model that does not load would reject every candidate: say so instead of measuring it.
    if config.cache.verify.enabled && config.cache.verify.model.enabled {
        let model = config.cache.verify.model.clone();
        let judge = tokio::task::spawn_blocking(move || ModelJudge::start(&model))
            .await
            .map_err(|e| e.to_string())?;
        if let Some(err) = judge.load_error() {
            return Err(format!("verifier model: {err}"));
        }
    }
    let embedding = config.clone();
    let embedder = tokio::task::spawn_blocking(move || Embedder::from_config(&embedding))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    let embedder_id = embedder.id();
    eprintln!("embedder: {embedder_id}");
    std::fs::create_dir_all(&args.out).map_err(|e| format!("{}: {e}", args.out.display()))?;
    let mut vectors = match &args.vectors {
        Some(file) => load_vectors(file, &embedder_id)?,
        None => HashMap::new(),
    };

    let layout = if args.pairwise {
        Layout::Pairwise
    } else {
        Layout::Simulation
    };
    for arg in &args.pairs {
        let (name, path) = name_and_path(arg);
        let name = match layout {
            Layout::Simulation => name,
            Layout::Pairwise => format!("{name}-pairwise"),
        };
        let pairs = quality::read_pairs(&path, args.limit)?;
        eprintln!("{name}: {} pairs from {}", pairs.len(), path.display());
        let missing: Vec<Pair> = pairs
            .iter()
            .filter(|p| !vectors.contains_key(&p.a) || !vectors.contains_key(&p.b))
            .cloned()
            .collect();
        if !missing.is_empty() {
            vectors.extend(quality::embed_all(&embedder, &missing).await?);
            if let Some(file) = &args.vectors {
                save_vectors(file, &embedder_id, &vectors)?;
            }
        }
        if args.simulate {
            let setup = simulate_setup(&args, &config);
            println!(
                "{}",
                simulate::write(&args.out, &name, &pairs, &vectors, &setup)?
            );
            continue;
        }
        let lowest = metrics::thresholds()[0];
        let (cache_config, id) = (config.cache.clone(), embedder_id.clone());
        let (pairs, vectors_in) = (pairs, std::mem::take(&mut vectors));
        let (pairs, vectors_back, measured) = tokio::task::spawn_blocking(move || {
            let measured =
                quality::measure(&pairs, &vectors_in, &cache_config, &id, lowest, layout);
            (pairs, vectors_in, measured)
        })
        .await
        .map_err(|e| e.to_string())?;
        vectors = vectors_back;
        let (judged, traces, timings) = measured?;

        let report = Report::new(
            &name,
            &path,
            &pairs,
            &embedder_id,
            &config,
            report::Measured {
                judged: &judged,
                timings,
                layout,
            },
        );
        write_outputs(&args, &report)?;
        if args.dump {
            let file = args.out.join(format!("quality-{name}.answers.jsonl"));
            let mut out = String::new();
            for trace in &traces {
                out.push_str(&serde_json::to_string(trace).map_err(|e| e.to_string())?);
                out.push('\n');
            }
            std::fs::write(&file, out).map_err(|e| format!("{}: {e}", file.display()))?;
        }
        println!("{}", report.markdown(false));
    }
    Ok(())
}

/// The simulation's settings: flags first, then the config, then defaults that show the
/// budget at work.
fn simulate_setup(args: &QualityArgs, config: &Config) -> simulate::Setup {
    let cache = &config.cache;
    let or = |value: f64, default: f64| if value > 0.0 { value } else { default };
    simulate::Setup {
        pairs: 0,
        events: args.events,
        budget: args.budget.unwrap_or(or(cache.max_wrong_rate, 0.05)),
        sample_rate: args
            .sample_rate
            .unwrap_or(or(cache.trust.shadow_sample_rate, 0.2)),
        floor: args.floor.unwrap_or(cache.similarity_threshold),
        seed: 18,
        trust: cache.trust.clone(),
    }
}

async fn e2e_run(args: &QualityArgs, config: &Config) -> Result<(), String> {
    std::fs::create_dir_all(&args.out).map_err(|e| format!("{}: {e}", args.out.display()))?;
    for arg in &args.pairs {
        let (name, path) = name_and_path(arg);
        let pairs = quality::read_pairs(&path, args.limit)?;
        eprintln!(
            "{name}: {} pairs from {}, end to end",
            pairs.len(),
            path.display()
        );
        let report = e2e::run(&name, &pairs, config).await?;
        let base = args.out.join(format!("quality-{name}-e2e"));
        let json = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())? + "\n";
        for (ext, text) in [("md", report.markdown()), ("json", json)] {
            let file = base.with_extension(ext);
            std::fs::write(&file, text).map_err(|e| format!("{}: {e}", file.display()))?;
            eprintln!("wrote {}", file.display());
        }
        println!("{}", report.markdown());
    }
    Ok(())
}

fn write_outputs(args: &QualityArgs, report: &Report) -> Result<(), String> {
    let base = args.out.join(format!("quality-{}", report.name));
    let write = |ext: &str, text: String| {
        let file = base.with_extension(ext);
        std::fs::write(&file, text).map_err(|e| format!("{}: {e}", file.display()))?;
        eprintln!("wrote {}", file.display());
        Ok::<_, String>(())
    };
    write("md", report.markdown(true))?;
    write(
        "json",
        serde_json::to_string_pretty(report).map_err(|e| e.to_string())? + "\n",
    )?;
    write("svg", plot::svg(report)?)
}

#[derive(serde::Serialize, serde::Deserialize)]
struct StoredVector {
    text: String,
    vector: Vec<f32>,
}

/// Embeddings kept by an earlier run with the same embedder (first line: its id).
fn load_vectors(file: &Path, embedder_id: &str) -> Result<HashMap<String, Vec<f32>>, String> {
    let mut vectors = HashMap::new();
    let Ok(opened) = std::fs::File::open(file) else {
        return Ok(vectors);
    };
    let mut lines = std::io::BufReader::new(opened).lines();
    let header = lines.next().transpose().map_err(|e| e.to_string())?;
    if header.as_deref() != Some(&serde_json::json!({ "embedder": embedder_id }).to_string()) {
        eprintln!("{}: another embedder's vectors; ignored", file.display());
        return Ok(vectors);
    }
    for line in lines {
        let line = line.map_err(|e| e.to_string())?;
        let stored: StoredVector =
            serde_json::from_str(&line).map_err(|e| format!("{}: {e}", file.display()))?;
        vectors.insert(stored.text, stored.vector);
    }
    eprintln!("{}: {} vectors reused", file.display(), vectors.len());
    Ok(vectors)
}

fn save_vectors(
    file: &Path,
    embedder_id: &str,
    vectors: &HashMap<String, Vec<f32>>,
) -> Result<(), String> {
    let fail = |e: std::io::Error| format!("{}: {e}", file.display());
    let mut out = BufWriter::new(std::fs::File::create(file).map_err(fail)?);
    writeln!(out, "{}", serde_json::json!({ "embedder": embedder_id })).map_err(fail)?;
    for (text, vector) in vectors {
        let line = serde_json::to_string(&StoredVector {
            text: text.clone(),
            vector: vector.clone(),
        })
        .map_err(|e| e.to_string())?;
        writeln!(out, "{line}").map_err(fail)?;
    }
    out.flush().map_err(fail)
}

#[cfg(test)]
mod tests;
