//! In-process embeddings: a sentence-transformers model (BERT family, e.g. all-MiniLM-L6-v2)
//! run with candle on the CPU. Nothing is downloaded: the model is read from
//! `embedding.model_dir` (see `scripts/fetch-model.sh`).
//!
//! The model lives on one dedicated thread; `embed` hands the text over the shared queue
//! (`queue.rs`) and awaits the answer, so inference never runs on the async workers. The thread
//! takes every request that is waiting (up to `embedding.max_batch`) and embeds them together:
//! one forward pass for many prompts costs far less than one each. Inputs of a pass are padded
//! to the longest one and masked, so a prompt gets the same vector alone or in a batch; a batch
//! is sorted by length and split where padding would waste more than it saves.
//!
//! Pipeline, as in sentence-transformers: WordPiece tokens → BERT → mean (or CLS) pooling over
//! the real tokens → L2 normalisation. Unlike sentence-transformers, a prompt with more tokens
//! than the model's `max_seq_length` is not truncated but refused (`EmbedError::TooLong`): the
//! vector of its first tokens would make prompts that differ only after them look identical.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config as BertConfig};
use serde::Deserialize;
use tokenizers::{Encoding, Tokenizer};

use super::queue::{Batches, Job, Queue, queue};
use super::{BuildError, EmbedError};
use crate::cache::index::normalize;
use crate::config::Config;

/// sentence-transformers' default when `sentence_bert_config.json` does not say.
const DEFAULT_MAX_TOKENS: usize = 256;
/// Text longer than `max_tokens * MAX_BYTES_PER_TOKEN` bytes is refused as too long without
/// tokenising it: tokenising a 30 MB prompt would hold up every other request. (A word piece is
/// a few bytes; only text that is nearly all whitespace could have fewer tokens than that in
/// so many bytes, and refusing it only costs a semantic hit.)
const MAX_BYTES_PER_TOKEN: usize = 256;
/// Most padded tokens in one forward pass (one longer input still gets a pass of its own).
/// all-MiniLM-L6-v2 on 2 cores: ~0.5 s per pass of 1024 tokens.
const TOKENS_PER_PASS: usize = 1024;

/// Handle to the model thread. Dropping it stops the thread once the queue is drained.
pub struct LocalEmbedder {
    /// `local:<folder name>:<dimension>:<digest of config, tokenizer, weights, pooling>`.
    pub(super) id: String,
    queue: Queue<String>,
    max_text_bytes: usize,
}

impl LocalEmbedder {
    /// Loads the model (reads ~100 MB and runs one warm-up pass: call off the async workers)
    /// and starts its thread.
    pub(super) fn new(config: &Config) -> Result<Self, BuildError> {
        let settings = &config.embedding;
        let dir = &settings.model_dir;
        let fail = |problem: String| BuildError::Model(describe(dir, &problem));
        let threads = match settings.threads {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            n => n,
        };
        let model = Model::load(dir, threads).map_err(fail)?;
        let id = model.id.clone();
        let max_text_bytes = model.max_tokens * MAX_BYTES_PER_TOKEN;
        tracing::info!(
            id = %id,
            dir = %dir.display(),
            max_tokens = model.max_tokens,
            pooling = ?model.pooling,
            threads,
            max_batch = settings.max_batch,
            "local embedding model loaded"
        );
        let timeout = std::time::Duration::from_millis(settings.timeout_ms);
        let (queue, batches) = queue(settings.max_batch, timeout);
        std::thread::Builder::new()
            .name("deja-embed".into())
            .spawn(move || model.serve(batches))
            .map_err(|e| fail(format!("cannot start the embedding thread: {e}")))?;
        Ok(LocalEmbedder {
            id,
            queue,
            max_text_bytes,
        })
    }

    /// Queues `text` for the model thread; waiting in the queue counts against the timeout.
    /// A text with more tokens than the model's window is refused (`EmbedError::TooLong`).
    pub(super) async fn embed(&self, text: &str) -> Result<Vec<f32>, EmbedError> {
        if text.len() > self.max_text_bytes {
            return Err(EmbedError::TooLong);
        }
        self.queue.embed(text.to_owned()).await
    }
}

/// Every load error names the key and says how to get the default model.
fn describe(dir: &Path, problem: &str) -> String {
    format!(
        "embedding.model_dir = {:?}: {problem}. Run scripts/fetch-model.sh to fetch \
         all-MiniLM-L6-v2 into models/all-MiniLM-L6-v2, or point embedding.model_dir at a \
         sentence-transformers model folder (config.json, tokenizer.json, model.safetensors)",
        dir.display().to_string()
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pooling {
    /// Average of the token vectors, padding excluded (all-MiniLM-L6-v2 and most models).
    Mean,
    /// The vector of the first ([CLS]) token.
    Cls,
}

/// The model and everything needed to run it; owned by the embedding thread.
struct Model {
    id: String,
    bert: BertModel,
    tokenizer: Tokenizer,
    pooling: Pooling,
    max_tokens: usize,
    dim: usize,
    pad_id: u32,
    /// Candle's matrix products and the tokenizer use rayon: this pool bounds their threads and
    /// keeps them apart from the rest of the process.
    pool: rayon::ThreadPool,
}

/// `modules.json`: the pipeline of a sentence-transformers model.
#[derive(Deserialize)]
struct ModuleEntry {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    path: String,
}

/// `1_Pooling/config.json`.
#[derive(Deserialize)]
struct PoolingConfig {
    word_embedding_dimension: Option<usize>,
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default)]
    pooling_mode_mean_tokens: bool,
    #[serde(default)]
    pooling_mode_max_tokens: bool,
    #[serde(default)]
    pooling_mode_mean_sqrt_len_tokens: bool,
    #[serde(default)]
    pooling_mode_weightedmean_tokens: bool,
    #[serde(default)]
    pooling_mode_lasttoken: bool,
}

/// `sentence_bert_config.json`.
#[derive(Deserialize)]
struct SentenceBertConfig {
    max_seq_length: Option<usize>,
}

fn read(dir: &Path, name: &str) -> Result<Vec<u8>, String> {
    std::fs::read(dir.join(name)).map_err(|e| format!("cannot read {name}: {e}"))
}

/// Reads an optional JSON file: `None` when it does not exist.
fn read_optional<T: serde::de::DeserializeOwned>(
    dir: &Path,
    name: &str,
) -> Result<Option<T>, String> {
    let path = dir.join(name);
    if !path.exists() {
        return Ok(None);
    }
    let bytes = read(dir, name)?;
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| format!("{name} is malformed: {e}"))
}

impl Model {
    fn load(dir: &Path, threads: usize) -> Result<Model, String> {
        if !dir.is_dir() {
            return Err(match std::path::absolute(dir) {
                Ok(abs) if abs != dir => format!("no such directory ({})", abs.display()),
                _ => "no such directory".into(),
            });
        }
        for name in ["config.json", "tokenizer.json", "model.safetensors"] {
            if !dir.join(name).is_file() {
                return Err(format!("{name} is missing"));
            }
        }

        let config_bytes = read(dir, "config.json")?;
        let config: BertConfig = serde_json::from_slice(&config_bytes)
            .map_err(|e| format!("config.json is not a BERT configuration: {e}"))?;
        if let Some(kind) = config.model_type.as_deref().filter(|&k| k != "bert") {
            return Err(format!(
                "config.json has model_type {kind:?}; only BERT models are supported"
            ));
        }
        let dim = config.hidden_size;

        // The sentence-transformers pipeline, when described: Transformer → Pooling →
        // (Normalize). Anything else (a Dense projection, ...) would give other vectors.
        let mut pooling_dir = "1_Pooling".to_owned();
        if let Some(modules) = read_optional::<Vec<ModuleEntry>>(dir, "modules.json")? {
            for module in modules {
                match module.kind.rsplit('.').next().unwrap_or_default() {
                    "Transformer" | "Normalize" => {}
                    "Pooling" => pooling_dir = module.path,
                    _ => {
                        return Err(format!(
                            "modules.json lists {}, which deja does not implement \
                             (only Transformer, Pooling and Normalize)",
                            module.kind
                        ));
                    }
                }
            }
        }
        let pooling_file = format!("{pooling_dir}/config.json");
        let pooling = match read_optional::<PoolingConfig>(dir, &pooling_file)? {
            None => Pooling::Mean,
            Some(p) => {
                if p.word_embedding_dimension.is_some_and(|d| d != dim) {
                    return Err(format!(
                        "{pooling_file} expects dimension {:?}, config.json says {dim}",
                        p.word_embedding_dimension
                    ));
                }
                let others = p.pooling_mode_max_tokens
                    || p.pooling_mode_mean_sqrt_len_tokens
                    || p.pooling_mode_weightedmean_tokens
                    || p.pooling_mode_lasttoken;
                match (p.pooling_mode_mean_tokens, p.pooling_mode_cls_token, others) {
                    (true, false, false) => Pooling::Mean,
                    (false, true, false) => Pooling::Cls,
                    _ => {
                        return Err(format!(
                            "{pooling_file} asks for a pooling deja does not implement \
                             (exactly one of mean or cls is supported)"
                        ));
                    }
                }
            }
        };

        let max_tokens = read_optional::<SentenceBertConfig>(dir, "sentence_bert_config.json")?
            .and_then(|c| c.max_seq_length)
            .unwrap_or(DEFAULT_MAX_TOKENS)
            .min(config.max_position_embeddings);
        if max_tokens < 2 {
            return Err(format!("max_seq_length {max_tokens} is too small"));
        }

        let tokenizer_bytes = read(dir, "tokenizer.json")?;
        let mut tokenizer = Tokenizer::from_bytes(&tokenizer_bytes)
            .map_err(|e| format!("tokenizer.json is malformed: {e}"))?;
        // The shipped tokenizer.json pads every input to 128 tokens and truncates at 128: no
        // padding here (batches are padded to their longest input below) and no truncation
        // (an input longer than `max_tokens` is refused, see `answer`).
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(None)
            .map_err(|e| format!("tokenizer.json: cannot turn truncation off: {e}"))?;

        let weights = read(dir, "model.safetensors")?;
        let mut digest = blake3::Hasher::new();
        for part in [&config_bytes, &tokenizer_bytes, &weights] {
            digest.update(&(part.len() as u64).to_le_bytes());
            digest.update(part);
        }
        digest.update(format!("{pooling:?}/{max_tokens}").as_bytes());
        let device = Device::Cpu;
        let tensors = candle_core::safetensors::load_buffer(&weights, &device)
            .map_err(|e| format!("model.safetensors is malformed: {e}"))?;
        drop(weights);
        let vb = VarBuilder::from_tensors(tensors, DType::F32, &device);
        let bert = BertModel::load(vb, &config)
            .map_err(|e| format!("model.safetensors does not match config.json: {e}"))?;

        let name = dir
            .canonicalize()
            .ok()
            .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "model".into());
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("deja-embed-{i}"))
            .build()
            .map_err(|e| format!("cannot start {threads} inference threads: {e}"))?;
        let model = Model {
            id: format!("local:{name}:{dim}:{}", &digest.finalize().to_hex()[..12]),
            bert,
            tokenizer,
            pooling,
            max_tokens,
            dim,
            pad_id: config.pad_token_id as u32,
            pool,
        };
        // Fail now rather than on the first request, and warm the allocator up.
        let (job, mut answer) = Job::new("deja warm-up".to_owned());
        model.pool.install(|| model.answer(vec![job]));
        match answer.try_recv() {
            Ok(Ok(v)) if v.len() == dim => Ok(model),
            Ok(Err(e)) => Err(format!("the model does not run: {e}")),
            _ => Err("the model does not run: no vector".into()),
        }
    }

    /// The embedding thread: batches whatever is waiting until every sender is gone.
    /// (Callers that timed out are no longer in a batch: their work is skipped.)
    fn serve(self, mut batches: Batches<String>) {
        while let Some(batch) = batches.next_blocking() {
            tracing::trace!(prompts = batch.len(), "embedding a batch");
            self.pool.install(|| self.answer(batch));
        }
        tracing::debug!("embedding thread stopped");
    }

    /// Embeds a batch and answers each job as soon as its forward pass is done; an input longer
    /// than the model's window is answered `TooLong` at once. The inputs are
    /// sorted by length and cut into passes (see [`passes`]), so short prompts neither pay for
    /// nor wait for a long one. Should a pass fail (or panic), its inputs are retried one by
    /// one so that one bad input does not fail the others.
    fn answer(&self, jobs: Vec<Job<String>>) {
        let texts: Vec<&str> = jobs.iter().map(|job| job.input.as_str()).collect();
        let encodings = guarded(|| {
            self.tokenizer
                .encode_batch_fast(texts, true)
                .map_err(|e| format!("tokenizing: {e}"))
        });
        let encodings = match encodings {
            Ok(encodings) => encodings,
            Err(e) => {
                for job in jobs {
                    job.answer(Err(EmbedError::Local(e.clone())));
                }
                return;
            }
        };
        let mut jobs: Vec<Option<Job<String>>> = jobs.into_iter().map(Some).collect();
        // The model reads `max_tokens` tokens ([CLS] and [SEP] included); past that, a vector
        // would stand for the beginning of the prompt only.
        for (i, encoding) in encodings.iter().enumerate() {
            if encoding.len() > self.max_tokens {
                reply(&mut jobs[i], Err(EmbedError::TooLong));
            }
        }
        let mut order: Vec<usize> = (0..encodings.len())
            .filter(|&i| jobs[i].is_some())
            .collect();
        order.sort_by_key(|&i| encodings[i].len());
        for pass in passes(&order, |i| encodings[i].len()) {
            // Callers that timed out meanwhile are no longer listening.
            let rows: Vec<usize> = pass
                .iter()
                .copied()
                .filter(|&i| jobs[i].as_ref().is_some_and(|job| !job.abandoned()))
                .collect();
            match guarded(|| self.forward(&encodings, &rows)) {
                Ok(vectors) => {
                    for (&i, vector) in rows.iter().zip(vectors) {
                        reply(&mut jobs[i], Ok(vector));
                    }
                }
                Err(e) if rows.len() == 1 => reply(&mut jobs[rows[0]], Err(EmbedError::Local(e))),
                Err(_) => {
                    for &i in &rows {
                        let result = guarded(|| self.forward(&encodings, &[i]))
                            .map(|mut vectors| vectors.pop().unwrap_or_default())
                            .map_err(EmbedError::Local);
                        reply(&mut jobs[i], result);
                    }
                }
            }
        }
    }

    /// Runs the model on `encodings[rows]`, padded to the longest and masked; returns each
    /// row's unit vector, in order.
    fn forward(&self, encodings: &[Encoding], rows: &[usize]) -> Result<Vec<Vec<f32>>, String> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let error = |e: candle_core::Error| format!("inference: {e}");
        let len = rows
            .iter()
            .map(|&i| encodings[i].len())
            .max()
            .unwrap_or(0)
            .clamp(1, self.max_tokens);
        let size = rows.len() * len;
        let (mut ids, mut types, mut mask) =
            (vec![self.pad_id; size], vec![0; size], vec![0; size]);
        for (row, &i) in rows.iter().enumerate() {
            let encoding = &encodings[i];
            let n = encoding.len().min(len);
            let at = row * len;
            ids[at..at + n].copy_from_slice(&encoding.get_ids()[..n]);
            types[at..at + n].copy_from_slice(&encoding.get_type_ids()[..n]);
            mask[at..at + n].fill(1u32);
        }
        let shape = (rows.len(), len);
        let ids = Tensor::from_vec(ids, shape, &Device::Cpu).map_err(error)?;
        let types = Tensor::from_vec(types, shape, &Device::Cpu).map_err(error)?;
        let mask = Tensor::from_vec(mask, shape, &Device::Cpu).map_err(error)?;
        let hidden = self
            .bert
            .forward(&ids, &types, Some(&mask))
            .map_err(error)?; // (rows, len, dim)
        let pooled = match self.pooling {
            Pooling::Mean => {
                let mask = mask.to_dtype(DType::F32).and_then(|m| m.unsqueeze(2));
                let mask = mask.map_err(error)?; // (rows, len, 1)
                let sum = hidden.broadcast_mul(&mask).and_then(|h| h.sum(1));
                let count = mask.sum(1).and_then(|c| c.clamp(1e-9f32, f32::MAX));
                sum.and_then(|s| s.broadcast_div(&count?))
            }
            Pooling::Cls => hidden.narrow(1, 0, 1).and_then(|h| h.squeeze(1)),
        };
        let mut vectors = pooled.and_then(|p| p.to_vec2::<f32>()).map_err(error)?;
        for vector in &mut vectors {
            if vector.len() != self.dim || !normalize(vector) {
                return Err("the model produced a zero or non-finite vector".into());
            }
        }
        Ok(vectors)
    }
}

/// Cuts `order` (input indices sorted by token count) into forward passes: a new pass starts
/// where padding everything to the next length would more than double the work, or where the
/// pass would exceed [`TOKENS_PER_PASS`] (a batch of long prompts would otherwise run for
/// seconds while the callers' timeouts run out).
fn passes(order: &[usize], len: impl Fn(usize) -> usize) -> Vec<&[usize]> {
    let mut passes = Vec::new();
    let (mut start, mut tokens) = (0, 0);
    for (n, &i) in order.iter().enumerate() {
        let len = len(i);
        let count = n - start;
        let padded = len * (count + 1);
        if count > 0 && (padded > 2 * (tokens + len) || padded > TOKENS_PER_PASS) {
            passes.push(&order[start..n]);
            start = n;
            tokens = 0;
        }
        tokens += len;
    }
    if start < order.len() {
        passes.push(&order[start..]);
    }
    passes
}

/// Runs `f`, turning a panic into an error (the embedding thread must outlive a bad input).
fn guarded<T>(f: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|_| Err("inference panicked".into()))
}

fn reply(job: &mut Option<Job<String>>, result: Result<Vec<f32>, EmbedError>) {
    if let Some(job) = job.take() {
        job.answer(result);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_avoid_padding_short_inputs_to_long_ones() {
        let cut = |lens: &[usize]| -> Vec<usize> {
            let order: Vec<usize> = (0..lens.len()).collect();
            passes(&order, |i| lens[i])
                .iter()
                .map(|p| p.len())
                .collect()
        };
        // 31 short prompts and one long one: two passes.
        let mut lens = vec![10; 31];
        lens.push(256);
        assert_eq!(cut(&lens), [31, 1]);
        // Similar lengths share a pass.
        assert_eq!(cut(&[8, 9, 9, 12, 14, 15]), [6]);
        // Long prompts: at most TOKENS_PER_PASS padded tokens per pass.
        assert_eq!(cut(&[250; 9]), [4, 4, 1]);
        assert_eq!(cut(&[600, 700]), [1, 1]);
        assert!(cut(&[]).is_empty());
    }

    #[test]
    fn missing_dir_names_the_key_and_the_script() {
        let dir = Path::new("/nonexistent/deja-model");
        let problem = Model::load(dir, 1).err().expect("fails");
        let message = describe(dir, &problem);
        assert!(message.contains("embedding.model_dir"), "{message}");
        assert!(message.contains("scripts/fetch-model.sh"), "{message}");
        assert!(message.contains("no such directory"), "{message}");
    }
}
