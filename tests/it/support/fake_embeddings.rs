//! The fake upstream's `/v1/embeddings`. Declared as a private child module of
//! `fake_upstream.rs`. Deterministic bag-of-words vectors (or the mode the test set), as
//! floats or base64, shortened to `dimensions`, with the API's errors for bad values.

use super::*;

/// The fake's default embedding: a 64-dim L2-normalised bag of lower-cased alphanumeric words,
/// each word hashed with blake3 (first 8 bytes, little-endian u64, mod 64).
pub fn bag_of_words_embedding(text: &str) -> Vec<f32> {
    let mut v = vec![0.0f32; EMBED_DIM];
    let lower = text.to_lowercase();
    for word in lower
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
    {
        let hash = blake3::hash(word.as_bytes());
        let mut first8 = [0u8; 8];
        first8.copy_from_slice(&hash.as_bytes()[..8]);
        v[(u64::from_le_bytes(first8) % EMBED_DIM as u64) as usize] += 1.0;
    }
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
    v
}

/// Cosine similarity (0.0 if either vector is all zeros).
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        dot / (na * nb)
    }
}

pub(super) async fn embeddings(state: &State, body: &Bytes) -> Response<Body> {
    let (mode, latency) = {
        let cfg = state.config.lock();
        (cfg.embed_mode.clone(), cfg.embed_latency)
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    match mode {
        EmbedMode::Status(code) => return openai_error(code, "fake upstream: embeddings failure"),
        EmbedMode::Stall(d) => tokio::time::sleep(d).await,
        EmbedMode::Normal | EmbedMode::Window(_) => {}
    }
    let req: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => return openai_error(400, &format!("fake upstream: invalid JSON body: {e}")),
    };
    let inputs: Vec<String> = match &req["input"] {
        Value::String(s) => vec![s.clone()],
        Value::Array(items) if items.iter().all(Value::is_string) => items
            .iter()
            .filter_map(|s| s.as_str().map(str::to_owned))
            .collect(),
        _ => {
            return openai_error(
                400,
                "fake upstream: input must be a string or array of strings",
            );
        }
    };
    if let EmbedMode::Window(tokens) = mode
        && let Some(longest) = inputs.iter().map(|text| word_count(text)).max()
        && longest > tokens
    {
        // The API's wording (invalid_request_error, param and code null), as its users report it.
        let message = format!(
            "This model's maximum context length is {tokens} tokens, however you requested \
             {longest} tokens ({longest} in your prompt; 0 for the completion). Please reduce \
             your prompt; or completion length."
        );
        return openai_error(400, &message);
    }
    let dimensions = match requested_dimensions(&req) {
        Ok(dimensions) => dimensions,
        Err(message) => return openai_error(400, &message),
    };
    // The API's `encoding_format`: "float" (the default) or "base64" (little-endian f32s).
    let as_base64 = match &req["encoding_format"] {
        Value::Null => false,
        Value::String(format) if format == "float" => false,
        Value::String(format) if format == "base64" => true,
        other => {
            return openai_error(
                400,
                &format!(
                    "Invalid value for 'encoding_format': {other}. Supported values are: 'float' and 'base64'."
                ),
            );
        }
    };
    let data: Vec<Value> = {
        let cfg = state.config.lock();
        inputs
            .iter()
            .enumerate()
            .map(|(i, text)| {
                let mut vector = cfg
                    .embeddings
                    .get(text)
                    .cloned()
                    .unwrap_or_else(|| bag_of_words_embedding(text));
                if let Some(dimensions) = dimensions {
                    vector = shortened(vector, dimensions);
                }
                let embedding = if as_base64 {
                    let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
                    json!(base64(&bytes))
                } else {
                    json!(vector)
                };
                json!({"object": "embedding", "index": i, "embedding": embedding})
            })
            .collect()
    };
    let words: usize = inputs.iter().map(|t| word_count(t)).sum();
    let body = json!({
        "object": "list",
        "data": data,
        "model": req["model"],
        "usage": {"prompt_tokens": words, "total_tokens": words},
    });
    json_response(200, body.to_string())
}

/// The request's `dimensions`, as the API checks it: text-embedding-3 models take a length up
/// to their own (the fake's is [`EMBED_DIM`]); text-embedding-ada-002 takes none.
fn requested_dimensions(req: &Value) -> Result<Option<usize>, String> {
    let requested = &req["dimensions"];
    if requested.is_null() {
        return Ok(None);
    }
    if req["model"] == "text-embedding-ada-002" {
        return Err("This model does not support specifying dimensions.".into());
    }
    match requested.as_u64() {
        Some(d) if (1..=EMBED_DIM as u64).contains(&d) => Ok(Some(d as usize)),
        _ => Err(format!(
            "Invalid value for 'dimensions' = {requested}. Must be between 1 and {EMBED_DIM}."
        )),
    }
}

/// A vector cut to its first `dimensions` values and scaled back to unit length, as the API
/// shortens text-embedding-3 vectors (the cut of an all-zero start stays zero).
fn shortened(mut vector: Vec<f32>, dimensions: usize) -> Vec<f32> {
    vector.truncate(dimensions);
    let norm = vector.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        vector.iter_mut().for_each(|x| *x /= norm);
    }
    vector
}
