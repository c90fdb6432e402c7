//! A BERT-family cross-encoder (Hugging Face `BertForSequenceClassification`, as
//! sentence-transformers' `CrossEncoder` saves it) run with candle on the CPU: both texts go
//! through the model together (`[CLS] query [SEP] candidate [SEP]`), the pooler reads the
//! `[CLS]` state and a linear head gives one logit per label.
//!
//! Weights are read from a folder (config.json, tokenizer.json, model.safetensors); nothing is
//! downloaded. The checkpoint's tensors are named `bert.*`, `bert.pooler.dense.*` and
//! `classifier.*`.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::{Linear, Module, VarBuilder};
use candle_transformers::models::bert::{BertModel, Config as BertConfig};
use serde::Deserialize;
use std::collections::BTreeMap;
use tokenizers::Tokenizer;

/// How the head's logits become a 0..1 "the same question" score.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Head {
    /// One output (STS-style cross-encoders): sigmoid of the logit.
    Sigmoid,
    /// Several labels; the probability of this one (a "duplicate" / "paraphrase" label, or
    /// label 1 of two).
    Label(usize),
    /// NLI: the probability of entailment, taken both ways (query → candidate and back); the
    /// lower one, since a paraphrase entails in both directions.
    Entailment(usize),
}

/// The parts of config.json beyond BERT's own.
#[derive(Deserialize)]
struct Labels {
    #[serde(default)]
    id2label: BTreeMap<String, String>,
    num_labels: Option<usize>,
}

pub struct CrossEncoder {
    bert: BertModel,
    pooler: Linear,
    classifier: Linear,
    tokenizer: Tokenizer,
    head: Head,
    max_tokens: usize,
    pad_id: u32,
}

fn read(dir: &Path, name: &str) -> Result<Vec<u8>, String> {
    std::fs::read(dir.join(name)).map_err(|e| format!("cannot read {name}: {e}"))
}

/// Picks the head from the labels config.json names.
pub fn head_of(id2label: &BTreeMap<String, String>, count: usize) -> Result<Head, String> {
    if count == 1 {
        return Ok(Head::Sigmoid);
    }
    let find = |names: &[&str]| {
        id2label.iter().find_map(|(id, label)| {
            let label = label.to_ascii_lowercase();
            names
                .contains(&label.as_str())
                .then(|| id.parse::<usize>().ok())
                .flatten()
                .filter(|&i| i < count)
        })
    };
    if let Some(i) = find(&["entailment"]) {
        return Ok(Head::Entailment(i));
    }
    if let Some(i) = find(&["duplicate", "paraphrase", "same", "similar", "equivalent"]) {
        return Ok(Head::Label(i));
    }
    if count == 2 {
        return Ok(Head::Label(1));
    }
    Err(format!(
        "config.json has {count} labels and none is \"entailment\" or \"duplicate\""
    ))
}

impl CrossEncoder {
    pub fn load(dir: &Path) -> Result<CrossEncoder, String> {
        if !dir.is_dir() {
            return Err(format!("no such directory ({})", dir.display()));
        }
        let config_bytes = read(dir, "config.json")?;
        let config: BertConfig = serde_json::from_slice(&config_bytes)
            .map_err(|e| format!("config.json is not a BERT configuration: {e}"))?;
        if let Some(kind) = config.model_type.as_deref().filter(|&k| k != "bert") {
            return Err(format!(
                "config.json has model_type {kind:?}; only BERT models are supported"
            ));
        }
        let labels: Labels = serde_json::from_slice(&config_bytes)
            .map_err(|e| format!("config.json labels: {e}"))?;
        let count = labels
            .num_labels
            .unwrap_or(labels.id2label.len())
            .max(labels.id2label.len())
            .max(1);
        let head = head_of(&labels.id2label, count)?;

        let mut tokenizer = Tokenizer::from_bytes(read(dir, "tokenizer.json")?)
            .map_err(|e| format!("tokenizer.json is malformed: {e}"))?;
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(None)
            .map_err(|e| format!("tokenizer.json: cannot turn truncation off: {e}"))?;
        let pad_id = tokenizer.token_to_id("[PAD]").unwrap_or(0);

        let device = Device::Cpu;
        let tensors =
            candle_core::safetensors::load_buffer(&read(dir, "model.safetensors")?, &device)
                .map_err(|e| format!("model.safetensors is malformed: {e}"))?;
        let vb = VarBuilder::from_tensors(tensors, DType::F32, &device);
        let mismatch =
            |e: candle_core::Error| format!("model.safetensors does not match config.json: {e}");
        let bert = BertModel::load(vb.clone(), &config).map_err(mismatch)?;
        let hidden = config.hidden_size;
        let pooler = candle_nn::linear(hidden, hidden, vb.pp("bert.pooler.dense"))
            .or_else(|_| candle_nn::linear(hidden, hidden, vb.pp("pooler.dense")))
            .map_err(mismatch)?;
        let classifier = candle_nn::linear(hidden, count, vb.pp("classifier")).map_err(mismatch)?;
        Ok(CrossEncoder {
            bert,
            pooler,
            classifier,
            tokenizer,
            head,
            max_tokens: config.max_position_embeddings,
            pad_id,
        })
    }

    pub fn head(&self) -> Head {
        self.head
    }

    /// The score (0..1) that an answer to `candidate` also answers `query`.
    pub fn score(&self, query: &str, candidate: &str) -> Result<f32, String> {
        let probabilities = |rows: &[(&str, &str)]| self.forward(rows);
        match self.head {
            Head::Sigmoid => Ok(sigmoid(probabilities(&[(query, candidate)])?[0][0])),
            Head::Label(i) => Ok(softmax(&probabilities(&[(query, candidate)])?[0])[i]),
            Head::Entailment(i) => {
                let logits = probabilities(&[(query, candidate), (candidate, query)])?;
                Ok(logits
                    .iter()
                    .map(|row| softmax(row)[i])
                    .fold(f32::INFINITY, f32::min))
            }
        }
    }

    /// The head's logits for each pair, padded to the longest and masked.
    fn forward(&self, pairs: &[(&str, &str)]) -> Result<Vec<Vec<f32>>, String> {
        let error = |e: candle_core::Error| format!("inference: {e}");
        let mut encodings = Vec::with_capacity(pairs.len());
        for &(a, b) in pairs {
            let encoding = self
                .tokenizer
                .encode((a, b), true)
                .map_err(|e| format!("tokenizing: {e}"))?;
            if encoding.len() > self.max_tokens {
                return Err(format!(
                    "{} tokens, the model reads {}",
                    encoding.len(),
                    self.max_tokens
                ));
            }
            encodings.push(encoding);
        }
        let len = encodings.iter().map(|e| e.len()).max().unwrap_or(0).max(1);
        let size = pairs.len() * len;
        let (mut ids, mut types, mut mask) =
            (vec![self.pad_id; size], vec![0u32; size], vec![0u32; size]);
        for (row, encoding) in encodings.iter().enumerate() {
            let (at, n) = (row * len, encoding.len());
            ids[at..at + n].copy_from_slice(encoding.get_ids());
            types[at..at + n].copy_from_slice(encoding.get_type_ids());
            mask[at..at + n].fill(1);
        }
        let shape = (pairs.len(), len);
        let ids = Tensor::from_vec(ids, shape, &Device::Cpu).map_err(error)?;
        let types = Tensor::from_vec(types, shape, &Device::Cpu).map_err(error)?;
        let mask = Tensor::from_vec(mask, shape, &Device::Cpu).map_err(error)?;
        let hidden = self
            .bert
            .forward(&ids, &types, Some(&mask))
            .map_err(error)?;
        let cls = hidden
            .narrow(1, 0, 1)
            .and_then(|h| h.squeeze(1))
            .map_err(error)?;
        let pooled = self
            .pooler
            .forward(&cls)
            .and_then(|p| p.tanh())
            .map_err(error)?;
        let logits = self.classifier.forward(&pooled).map_err(error)?;
        logits.to_vec2::<f32>().map_err(error)
    }
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = logits.iter().map(|l| (l - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.iter().map(|e| e / sum).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(i, l)| (i.to_string(), l.to_string()))
            .collect()
    }

    #[test]
    fn the_head_follows_the_labels() {
        assert_eq!(head_of(&BTreeMap::new(), 1), Ok(Head::Sigmoid));
        let nli = labels(&[
            ("0", "contradiction"),
            ("1", "entailment"),
            ("2", "neutral"),
        ]);
        assert_eq!(head_of(&nli, 3), Ok(Head::Entailment(1)));
        assert_eq!(
            head_of(&labels(&[("0", "LABEL_0"), ("1", "LABEL_1")]), 2),
            Ok(Head::Label(1))
        );
        let dup = labels(&[("0", "duplicate"), ("1", "different")]);
        assert_eq!(head_of(&dup, 2), Ok(Head::Label(0)));
        assert!(head_of(&labels(&[("0", "a"), ("1", "b"), ("2", "c")]), 3).is_err());
    }

    #[test]
    fn softmax_sums_to_one() {
        let p = softmax(&[1.0, 2.0, 3.0]);
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(p[2] > p[1] && p[1] > p[0]);
        assert!((sigmoid(0.0) - 0.5).abs() < 1e-6);
    }
}
