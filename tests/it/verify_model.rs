//! The verifier model stage (`[cache.verify.model]`) through the real cache: a tiny
//! BERT cross-encoder with random weights, written to a folder as a real checkpoint would be
//! (config.json, tokenizer.json, model.safetensors), proves the plumbing. The classifier's
//! bias makes its verdict "yes" or "no" whatever the text; the random weights make two texts
//! score differently, so the verdict that decides is the model's own.
#![cfg(feature = "local-embeddings")]

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use candle_transformers::models::bert::{BertModel, Config as BertConfig};
use deja::cache::key::Hash32;
use deja::cache::verify::{ModelJudge, ModelVerifyConfig};
use deja::cache::{Cache, NewEntry, Requirements};
use deja::clock::ManualClock;
use deja::config::CacheConfig;
use serde_json::json;

const WORDS: [&str; 12] = [
    "what", "is", "the", "capital", "of", "france", "germany", "how", "tall", "eiffel", "tower",
    "?",
];
const NEEDS: Requirements = Requirements {
    max_age_ms: None,
    needs_usage: false,
};
const THRESHOLD: f32 = 0.9;

/// Writes a 1-layer BERT sequence classifier (one output) with random weights into `dir`; the
/// classifier's bias is `bias` (large positive: accepts everything, large negative: nothing).
fn tiny_model(dir: &Path, bias: Option<f32>) {
    let vocab: serde_json::Map<String, serde_json::Value> = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
        .iter()
        .chain(WORDS.iter())
        .enumerate()
        .map(|(i, w)| (w.to_string(), json!(i)))
        .collect();
    let config = json!({
        "architectures": ["BertForSequenceClassification"], "model_type": "bert",
        "vocab_size": vocab.len(), "hidden_size": 16, "num_hidden_layers": 1,
        "num_attention_heads": 2, "intermediate_size": 32, "hidden_act": "gelu",
        "hidden_dropout_prob": 0.0, "max_position_embeddings": 64, "type_vocab_size": 2,
        "initializer_range": 0.02, "layer_norm_eps": 1e-12, "pad_token_id": 0,
        "id2label": {"0": "LABEL_0"}
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let special = |t: &str, i: u32| json!({"id": t, "ids": [i], "tokens": [t]});
    let token = |t: &str, ty: u32| json!({"SpecialToken": {"id": t, "type_id": ty}});
    let seq = |s: &str, ty: u32| json!({"Sequence": {"id": s, "type_id": ty}});
    let tokenizer = json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": {"type": "Lowercase"},
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [token("[CLS]", 0), seq("A", 0), token("[SEP]", 0)],
            "pair": [token("[CLS]", 0), seq("A", 0), token("[SEP]", 0), seq("B", 1), token("[SEP]", 1)],
            "special_tokens": {"[CLS]": special("[CLS]", 2), "[SEP]": special("[SEP]", 3)}
        },
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "[UNK]"}
    });
    std::fs::write(dir.join("tokenizer.json"), tokenizer.to_string()).unwrap();

    let bert_config: BertConfig = serde_json::from_value(config).unwrap();
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    BertModel::load(vb.pp("bert"), &bert_config).unwrap();
    candle_nn::linear(16, 16, vb.pp("bert.pooler.dense")).unwrap();
    candle_nn::linear(16, 1, vb.pp("classifier")).unwrap();
    if let Some(bias) = bias {
        let vars = varmap.data().lock().unwrap();
        vars["classifier.bias"]
            .set(&Tensor::new(&[bias], &Device::Cpu).unwrap())
            .unwrap();
    }
    varmap.save(dir.join("model.safetensors")).unwrap();
}

fn model_config(dir: &Path) -> ModelVerifyConfig {
    ModelVerifyConfig {
        enabled: true,
        dir: dir.to_path_buf(),
        timeout_ms: 10_000, // unoptimised test builds; the timeout has its own test
        ..Default::default()
    }
}

/// A cache whose one scope holds `prompt` at cosine `similarity` from the query vector.
struct Setup {
    _dir: tempfile::TempDir,
    cache: Cache,
}

const QUERY: [f32; 4] = [1.0, 0.0, 0.0, 0.0];

fn scope(n: u8) -> Hash32 {
    Hash32([n; 32])
}

fn setup(model: ModelVerifyConfig, stored: &[(u8, &str, f32)]) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let mut config = CacheConfig {
        dir: dir.path().join("store"),
        similarity_threshold: THRESHOLD,
        ..CacheConfig::default()
    };
    config.verify.model = model;
    let cache = Cache::open(&config, "e", ManualClock::starting_now()).unwrap();
    for &(n, prompt, similarity) in stored {
        let other = (1.0 - similarity * similarity).sqrt();
        cache
            .insert(NewEntry {
                scope: scope(n),
                exact: Hash32([n.wrapping_add(100); 32]),
                model: "m".into(),
                response: "{}".into(),
                has_usage: true,
                vector: Some(vec![similarity, other, 0.0, 0.0]),
                prompt: Some(prompt.into()),
                owner: Default::default(),
            })
            .unwrap();
    }
    Setup { _dir: dir, cache }
}

fn hits(setup: &Setup, n: u8, query: &str, threshold: f32) -> (bool, usize) {
    let outcome = setup
        .cache
        .lookup_semantic(&scope(n), &QUERY, query, threshold, NEEDS)
        .unwrap();
    (outcome.hit.is_some(), outcome.rejected)
}

const Q: &str = "what is the capital of france ?";
const P: &str = "what is the capital of germany ?";

#[test]
fn the_models_yes_is_a_hit_and_its_no_a_miss() {
    let folder = tempfile::tempdir().unwrap();
    tiny_model(folder.path(), Some(20.0));
    let yes = setup(model_config(folder.path()), &[(1, P, 0.95)]);
    assert_eq!(hits(&yes, 1, Q, THRESHOLD), (true, 0));

    tiny_model(folder.path(), Some(-20.0));
    let no = setup(model_config(folder.path()), &[(1, P, 0.95)]);
    assert_eq!(hits(&no, 1, Q, THRESHOLD), (false, 1), "the model said no");

    let off = setup(
        ModelVerifyConfig {
            enabled: false,
            ..model_config(folder.path())
        },
        &[(1, P, 0.95)],
    );
    assert_eq!(
        hits(&off, 1, Q, THRESHOLD),
        (true, 0),
        "the rules alone pass it"
    );
}

/// Random weights score two candidates differently; with `accept` between the two scores,
/// the higher one hits and the lower one misses: the model's reading of the texts decides.
#[test]
fn the_score_of_the_pair_decides() {
    let folder = tempfile::tempdir().unwrap();
    tiny_model(folder.path(), None);
    let probe = ModelJudge::start(&model_config(folder.path()));
    let other = "how tall is the eiffel tower ?";
    let (s1, s2) = (probe.score(Q, P).unwrap(), probe.score(Q, other).unwrap());
    assert!((s1 - s2).abs() > 1e-6, "random weights gave equal scores");
    let config = ModelVerifyConfig {
        accept: (s1 + s2) / 2.0,
        ..model_config(folder.path())
    };
    let cache = setup(config, &[(1, P, 0.95), (2, other, 0.95)]);
    assert_eq!(hits(&cache, 1, Q, THRESHOLD).0, s1 > s2);
    assert_eq!(hits(&cache, 2, Q, THRESHOLD).0, s2 > s1);
}

#[test]
fn a_missing_or_broken_model_is_a_miss() {
    let folder = tempfile::tempdir().unwrap();
    let missing = setup(
        model_config(&folder.path().join("nothing")),
        &[(1, P, 0.95)],
    );
    assert_eq!(hits(&missing, 1, Q, THRESHOLD), (false, 1));

    tiny_model(folder.path(), Some(20.0));
    std::fs::write(folder.path().join("model.safetensors"), b"not weights").unwrap();
    let broken = setup(model_config(folder.path()), &[(1, P, 0.95)]);
    assert_eq!(hits(&broken, 1, Q, THRESHOLD), (false, 1));
}

#[test]
fn only_candidates_above_the_lower_bound_are_judged() {
    let folder = tempfile::tempdir().unwrap();
    tiny_model(folder.path(), Some(20.0));
    let bound = |lower_bound| ModelVerifyConfig {
        lower_bound,
        ..model_config(folder.path())
    };
    // Cosine 0.8, under the threshold of 0.9.
    let stored = [(1, P, 0.8)];
    assert_eq!(
        hits(&setup(bound(None), &stored), 1, Q, THRESHOLD),
        (false, 0)
    );
    assert_eq!(
        hits(&setup(bound(Some(0.85)), &stored), 1, Q, THRESHOLD),
        (false, 0)
    );
    let lowered = setup(bound(Some(0.75)), &stored);
    assert_eq!(hits(&lowered, 1, Q, THRESHOLD), (true, 0));
    // A request that raised its threshold keeps it.
    assert_eq!(hits(&lowered, 1, Q, 0.95), (false, 0));

    // Down there, the model's no still rejects.
    tiny_model(folder.path(), Some(-20.0));
    assert_eq!(
        hits(&setup(bound(Some(0.75)), &stored), 1, Q, THRESHOLD),
        (false, 1)
    );
}

#[test]
fn the_rules_run_first() {
    let folder = tempfile::tempdir().unwrap();
    tiny_model(folder.path(), Some(20.0));
    // Numbers differ: the rules reject it, whatever the model would say.
    let cache = setup(model_config(folder.path()), &[(1, "what is 2 + 3 ?", 0.97)]);
    assert_eq!(hits(&cache, 1, "what is 2 + 2 ?", THRESHOLD), (false, 1));
}
