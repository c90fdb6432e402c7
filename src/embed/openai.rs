//! Embeddings from an OpenAI-compatible `/v1/embeddings` endpoint, batched.
//!
//! Prompts waiting at the same time share one call: while other calls are out, the first
//! waits up to `embedding.batch_wait_ms` for others (at most `embedding.max_batch` in all); an
//! idle embedder sends at once, so a lone caller never waits. The batch goes out as one
//! `input` array and each caller gets the vector whose `index` is its place in
//! that array (the order of `data` is not relied on). When deja has no key of its own for
//! embeddings, each caller's key pays for its prompts: prompts of different keys never share a
//! call.
//!
//! The API refuses a whole call with a 400 when one of its inputs is bad: more tokens than the
//! model's window (8191 for text-embedding-3-small), or an empty string. Such a call is sent
//! again one input per call, so only the bad input fails. An input past the window becomes
//! `EmbedError::TooLong` (the request uses the exact tier only, as with the local embedder);
//! any other failure fails the callers of that call only, and they serve a miss.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use base64::Engine;
use futures_util::future::join_all;
use http::HeaderValue;
use serde::Deserialize;
use serde_json::{Value, json};

use super::EmbedError;
use super::queue::{Batches, Job, Queue, queue};
use crate::cache::index::normalize;
use crate::config::{Config, EmbeddingEncoding, Secret};
use crate::upstream::http_client;

/// Most text in one call. The API takes at most 300,000 tokens per call, and a token is at
/// least one byte, so a call within this many bytes is never refused for its total.
const MAX_CALL_BYTES: usize = 300_000;

/// `POST /embeddings` on an OpenAI-compatible API (by default, the upstream itself).
pub struct OpenAiEmbedder {
    api: Arc<Api>,
    /// Started on the first `embed`, on its caller's runtime (the embedder may be built
    /// outside one).
    queue: OnceLock<Queue<Prompt>>,
    max_batch: usize,
    batch_wait: Duration,
}

/// What a call needs; shared with the tasks that make the calls.
struct Api {
    client: reqwest::Client,
    /// Where and with which key to call; follows the upstream's on reload (`retarget`).
    target: ArcSwap<Target>,
    model: String,
    /// The API's `dimensions`, when configured.
    dimensions: Option<usize>,
    encoding_format: EmbeddingEncoding,
    timeout: Duration,
    /// Calls under way.
    in_flight: AtomicUsize,
}

struct Target {
    url: String,
    api_key: Option<Secret>,
}

impl Target {
    fn of(config: &Config) -> Target {
        Target {
            url: format!(
                "{}/embeddings",
                config.embedding_base_url().trim_end_matches('/')
            ),
            api_key: config
                .embedding
                .api_key
                .clone()
                .or_else(|| config.upstream.api_key.clone()),
        }
    }
}

/// One caller's prompt, and the key that pays for it when deja has none for embeddings.
struct Prompt {
    text: String,
    caller_auth: Option<HeaderValue>,
}

impl OpenAiEmbedder {
    pub(super) fn new(config: &Config) -> Result<Self, reqwest::Error> {
        let settings = &config.embedding;
        let timeout = Duration::from_millis(settings.timeout_ms);
        let api = Api {
            client: http_client(timeout, None)?,
            target: ArcSwap::from_pointee(Target::of(config)),
            model: settings.model.clone(),
            dimensions: settings.dimensions,
            encoding_format: settings.encoding_format,
            timeout,
            in_flight: AtomicUsize::new(0),
        };
        Ok(OpenAiEmbedder {
            api: Arc::new(api),
            queue: OnceLock::new(),
            max_batch: settings.max_batch,
            batch_wait: Duration::from_millis(settings.batch_wait_ms),
        })
    }

    /// The vector space: the model, and the vectors' length when it is not the model's own.
    pub(super) fn id(&self) -> String {
        match self.api.dimensions {
            None => format!("openai:{}", self.api.model),
            Some(dimensions) => format!("openai:{}:dimensions={dimensions}", self.api.model),
        }
    }

    /// Takes the upstream's address and key from a reloaded configuration (the embedding
    /// section's own settings need a restart and were kept).
    pub(super) fn retarget(&self, config: &Config) {
        self.api.target.store(Arc::new(Target::of(config)));
    }

    /// Queues the prompt for the next call; waiting counts against `embedding.timeout_ms`.
    pub(super) async fn embed(
        &self,
        text: &str,
        caller_auth: Option<&HeaderValue>,
    ) -> Result<Vec<f32>, EmbedError> {
        let queue = self.queue.get_or_init(|| {
            let (queue, batches) = queue(self.max_batch, self.api.timeout);
            tokio::spawn(dispatch(self.api.clone(), batches, self.batch_wait));
            queue
        });
        let prompt = Prompt {
            text: text.to_owned(),
            caller_auth: caller_auth.cloned(),
        };
        queue.embed(prompt).await
    }
}

/// Takes batches off the queue and makes their calls, each in a task of its own so the next
/// batch does not wait for the last one's answer. Ends when the embedder is dropped.
async fn dispatch(api: Arc<Api>, mut batches: Batches<Prompt>, wait: Duration) {
    // Waiting for company pays off only under load, when calls are already out.
    let wait = || match api.in_flight.load(Ordering::Relaxed) {
        0 => Duration::ZERO,
        _ => wait,
    };
    while let Some(batch) = batches.next(wait).await {
        let target = api.target.load_full();
        for jobs in calls(batch, target.api_key.is_none()) {
            let (call, target) = (InFlight::start(&api), target.clone());
            tokio::spawn(async move {
                call.api.clone().answer(target, jobs).await;
                drop(call);
            });
        }
    }
}

/// Counts a call in `Api::in_flight` until dropped (also if its task is cancelled).
struct InFlight {
    api: Arc<Api>,
}

impl InFlight {
    fn start(api: &Arc<Api>) -> InFlight {
        api.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight { api: api.clone() }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.api.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Splits a batch into calls: with `by_caller` (deja uses the callers' keys), prompts of
/// different keys never share a call; and a call carries at most [`MAX_CALL_BYTES`] of text.
fn calls(batch: Vec<Job<Prompt>>, by_caller: bool) -> Vec<Vec<Job<Prompt>>> {
    let mut calls: Vec<(Option<HeaderValue>, usize, Vec<Job<Prompt>>)> = Vec::new();
    for job in batch {
        let key = by_caller.then(|| job.input.caller_auth.clone()).flatten();
        let bytes = job.input.text.len();
        let open = calls
            .iter_mut()
            .find(|(k, size, _)| *k == key && size + bytes <= MAX_CALL_BYTES);
        match open {
            Some((_, size, jobs)) => {
                *size += bytes;
                jobs.push(job);
            }
            None => calls.push((key, bytes, vec![job])),
        }
    }
    calls.into_iter().map(|(_, _, jobs)| jobs).collect()
}

impl Api {
    /// Makes one call for `jobs` and answers each; a refused call of several inputs is sent
    /// again one input per call (see the module comment).
    async fn answer(self: Arc<Self>, target: Arc<Target>, jobs: Vec<Job<Prompt>>) {
        let Some(auth) = jobs.first().map(|job| job.input.caller_auth.clone()) else {
            return;
        };
        let texts: Vec<&str> = jobs.iter().map(|job| job.input.text.as_str()).collect();
        tracing::trace!(inputs = texts.len(), "embedding call");
        match self.call(&target, &texts, auth.as_ref()).await {
            Ok(vectors) => {
                for (job, vector) in jobs.into_iter().zip(vectors) {
                    job.answer(Ok(vector));
                }
            }
            Err(EmbedError::TooLong | EmbedError::Status(400)) if jobs.len() > 1 => {
                let alone = jobs.into_iter().filter(|job| !job.abandoned()).map(|job| {
                    let (this, target, auth) = (&self, &target, auth.as_ref());
                    async move {
                        let text = [job.input.text.as_str()];
                        let vector = this.call(target, &text, auth).await;
                        job.answer(vector.and_then(|mut v| v.pop().ok_or(NO_VECTOR)));
                    }
                });
                join_all(alone).await;
            }
            Err(err) => {
                for job in jobs {
                    job.answer(Err(err.clone()));
                }
            }
        }
    }

    /// `POST /embeddings` with `texts` as the input array; their unit vectors, in order.
    async fn call(
        &self,
        target: &Target,
        texts: &[&str],
        caller_auth: Option<&HeaderValue>,
    ) -> Result<Vec<Vec<f32>>, EmbedError> {
        let mut body = json!({
            "model": self.model,
            "input": texts,
            "encoding_format": self.encoding_format,
        });
        if let Some(dimensions) = self.dimensions {
            body["dimensions"] = json!(dimensions);
        }
        let mut request = self.client.post(&target.url).json(&body);
        if let Some(key) = &target.api_key {
            request = request.bearer_auth(key.expose());
        } else if let Some(auth) = caller_auth {
            request = request.header(http::header::AUTHORIZATION, auth.clone());
        }
        let call = async {
            let response = request
                .send()
                .await
                .map_err(|e| EmbedError::Transport(e.without_url().to_string()))?;
            let status = response.status();
            if status == http::StatusCode::BAD_REQUEST {
                let body = response.json::<Value>().await.unwrap_or_default();
                return Err(if over_window(&body) {
                    EmbedError::TooLong
                } else {
                    EmbedError::Status(status.as_u16())
                });
            }
            if !status.is_success() {
                return Err(EmbedError::Status(status.as_u16()));
            }
            response
                .bytes()
                .await
                .map_err(|e| EmbedError::Transport(e.without_url().to_string()))
        };
        let body = tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| EmbedError::Timeout(self.timeout))??;
        vectors(&body, texts.len(), self.dimensions)
    }
}

const NO_VECTOR: EmbedError = EmbedError::Malformed("an input has no vector");

/// The API's answer: `data` holds one item per input, each naming its input by `index`.
#[derive(Deserialize)]
struct EmbeddingList {
    data: Vec<EmbeddingItem>,
}

#[derive(Deserialize)]
struct EmbeddingItem {
    index: usize,
    embedding: Embedding,
}

/// A vector as JSON numbers, or as base64 of little-endian f32s (`encoding_format: base64`).
enum Embedding {
    Floats(Vec<f32>),
    Base64(String),
}

/// Reads whichever form the API sent in one pass. (`#[serde(untagged)]` buffered every
/// answer, then tried the numbers first: for base64, that failure formatted the whole 8 KB
/// string into an error message; a 1536-d answer took 11 µs to read, now 4.6.)
impl<'de> Deserialize<'de> for Embedding {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(EmbeddingVisitor)
    }
}

struct EmbeddingVisitor;

impl<'de> serde::de::Visitor<'de> for EmbeddingVisitor {
    type Value = Embedding;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an array of numbers or a base64 string")
    }

    fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Embedding, E> {
        Ok(Embedding::Base64(text.to_owned()))
    }

    fn visit_string<E: serde::de::Error>(self, text: String) -> Result<Embedding, E> {
        Ok(Embedding::Base64(text))
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Embedding, A::Error> {
        let mut vector = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(x) = seq.next_element::<f32>()? {
            vector.push(x);
        }
        Ok(Embedding::Floats(vector))
    }
}

impl Embedding {
    fn into_vector(self) -> Result<Vec<f32>, EmbedError> {
        match self {
            Embedding::Floats(vector) => Ok(vector),
            Embedding::Base64(text) => {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(text)
                    .map_err(|_| EmbedError::Malformed("an embedding that is not base64"))?;
                if bytes.len() % 4 != 0 {
                    return Err(EmbedError::Malformed("base64 embedding not of f32s"));
                }
                Ok(bytes
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect())
            }
        }
    }
}

/// The unit vector of each of `inputs` inputs, in input order, placed by each item's `index`.
/// With `dimensions` set, a vector of another length is refused: it would not be comparable
/// with the others (an API that ignores the parameter).
fn vectors(
    body: &[u8],
    inputs: usize,
    dimensions: Option<usize>,
) -> Result<Vec<Vec<f32>>, EmbedError> {
    let list: EmbeddingList =
        serde_json::from_slice(body).map_err(|_| EmbedError::Malformed("not an embedding list"))?;
    let mut vectors: Vec<Option<Vec<f32>>> = vec![None; inputs];
    for item in list.data {
        let slot = vectors
            .get_mut(item.index)
            .ok_or(EmbedError::Malformed("an index past the inputs"))?;
        let mut vector = item.embedding.into_vector()?;
        if dimensions.is_some_and(|d| d != vector.len()) {
            return Err(EmbedError::Malformed(
                "a vector whose length is not embedding.dimensions",
            ));
        }
        if !normalize(&mut vector) {
            return Err(EmbedError::Malformed("zero or non-finite vector"));
        }
        if slot.replace(vector).is_some() {
            return Err(EmbedError::Malformed("two vectors for one input"));
        }
    }
    vectors.into_iter().collect::<Option<_>>().ok_or(NO_VECTOR)
}

/// Whether a 400 answer says the input has more tokens than the model reads (8191 for the
/// text-embedding-3 models). OpenAI says so in the message only ("This model's maximum context
/// length is 8192 tokens, however you requested ...", or "Invalid 'input': maximum context
/// length is 8192 tokens."), with `code` null; Azure and some others set
/// `code: "context_length_exceeded"`.
fn over_window(body: &Value) -> bool {
    let error = &body["error"];
    error["code"] == "context_length_exceeded"
        || error["message"]
            .as_str()
            .is_some_and(|m| m.contains("maximum context length"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_openai_window_errors() {
        let openai = json!({"error": {
            "message": "Invalid 'input': maximum context length is 8192 tokens.",
            "type": "invalid_request_error", "param": null, "code": null}});
        let azure = json!({"error": {"message": "too long", "code": "context_length_exceeded"}});
        let other = json!({"error": {"message": "Invalid 'model'", "code": null}});
        assert!(over_window(&openai) && over_window(&azure));
        assert!(!over_window(&other) && !over_window(&json!("not an error")));
    }

    fn list(items: &[(usize, &[f32])]) -> Vec<u8> {
        let data: Vec<Value> = items
            .iter()
            .map(|(index, v)| json!({"object": "embedding", "index": index, "embedding": v}))
            .collect();
        json!({"object": "list", "data": data, "model": "m"})
            .to_string()
            .into_bytes()
    }

    #[test]
    fn vectors_are_placed_by_index_not_by_order() {
        let body = list(&[(2, &[0.0, 3.0]), (0, &[2.0, 0.0]), (1, &[1.0, 1.0])]);
        let vectors = vectors(&body, 3, None).unwrap();
        let half = 0.5f32.sqrt();
        assert_eq!(vectors, [vec![1.0, 0.0], vec![half, half], vec![0.0, 1.0]]);
    }

    #[test]
    fn base64_and_number_vectors_read_alike() {
        let floats = [0.6f32, 0.0, 0.5, -0.6];
        let bytes: Vec<u8> = floats.iter().flat_map(|x| x.to_le_bytes()).collect();
        let text = base64::engine::general_purpose::STANDARD.encode(bytes);
        // The API's form, and one with an escaped slash (JSON allows it; the value is then
        // not borrowed from the body).
        let escaped = json!({"data": [{"index": 0, "embedding": "ESCAPED"}]})
            .to_string()
            .replace("ESCAPED", &text.replace('/', "\\/"));
        assert!(escaped.contains("\\/"), "{escaped}");
        let base64 = json!({"object": "list", "data": [
            {"object": "embedding", "index": 0, "embedding": text}], "model": "m"});
        let want = vectors(&list(&[(0, &floats)]), 1, None).unwrap();
        let norm = floats.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert_eq!(want, [floats.map(|x| x / norm).to_vec()]);
        assert_eq!(
            vectors(base64.to_string().as_bytes(), 1, None).unwrap(),
            want
        );
        assert_eq!(vectors(escaped.as_bytes(), 1, None).unwrap(), want);
        for bad in [
            json!("not base64!"),
            json!({"x": 1}),
            json!([1, "a"]),
            json!(null),
        ] {
            let body = json!({"data": [{"index": 0, "embedding": bad}]});
            assert!(matches!(
                vectors(body.to_string().as_bytes(), 1, None),
                Err(EmbedError::Malformed(_))
            ));
        }
    }

    #[test]
    fn an_answer_that_does_not_cover_the_inputs_is_malformed() {
        let missing = list(&[(0, &[1.0])]);
        let twice = list(&[(0, &[1.0]), (0, &[1.0])]);
        let beyond = list(&[(0, &[1.0]), (2, &[1.0])]);
        for body in [missing, twice, beyond] {
            assert!(matches!(
                vectors(&body, 2, None),
                Err(EmbedError::Malformed(_))
            ));
        }
        let short = list(&[(0, &[1.0, 0.0])]);
        assert!(vectors(&short, 1, Some(2)).is_ok());
        assert!(matches!(
            vectors(&short, 1, Some(3)),
            Err(EmbedError::Malformed(_))
        ));
    }

    fn job(text: &str, key: Option<&'static str>) -> Job<Prompt> {
        let prompt = Prompt {
            text: text.into(),
            caller_auth: key.map(HeaderValue::from_static),
        };
        Job::new(prompt).0
    }

    fn texts(calls: &[Vec<Job<Prompt>>]) -> Vec<Vec<String>> {
        calls
            .iter()
            .map(|call| call.iter().map(|job| job.input.text.clone()).collect())
            .collect()
    }

    #[test]
    fn callers_keys_never_share_a_call() {
        let batch = || {
            vec![
                job("a1", Some("Bearer a")),
                job("b1", Some("Bearer b")),
                job("a2", Some("Bearer a")),
                job("none", None),
            ]
        };
        assert_eq!(
            texts(&calls(batch(), true)),
            [vec!["a1", "a2"], vec!["b1"], vec!["none"]]
        );
        // With deja's own key, everyone's prompts go together.
        assert_eq!(
            texts(&calls(batch(), false)),
            [vec!["a1", "b1", "a2", "none"]]
        );
    }

    #[test]
    fn a_call_stays_within_the_apis_token_total() {
        let long = "x".repeat(MAX_CALL_BYTES / 2);
        let batch = vec![job(&long, None), job(&long, None), job(&long, None)];
        let sizes: Vec<usize> = calls(batch, false).iter().map(Vec::len).collect();
        assert_eq!(sizes, [2, 1]);
    }
}
