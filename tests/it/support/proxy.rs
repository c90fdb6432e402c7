//! Starts deja in-process on port 0 against a `FakeUpstream`, with a manual clock and a
//! temporary cache directory, plus helpers to call it.

use std::sync::Arc;

use deja::clock::ManualClock;
use deja::config::Config;
use deja::server::{RunningServer, start};
use serde_json::{Value, json};
use tempfile::TempDir;

use super::fake_upstream::{FakeUpstream, http_client};

pub const KEY_A: &str = "sk-test-tenant-a";
pub const KEY_B: &str = "sk-test-tenant-b";

pub struct Harness {
    pub upstream: FakeUpstream,
    pub proxy: RunningServer,
    pub clock: Arc<ManualClock>,
    pub client: reqwest::Client,
    /// Kept alive for the store's lifetime.
    pub dir: TempDir,
}

impl Harness {
    pub async fn start() -> Harness {
        Harness::with(|_| {}).await
    }

    /// Starts with test defaults (threshold 0.9, 1 s sweeps), then `adjust`.
    pub async fn with(adjust: impl FnOnce(&mut Config)) -> Harness {
        let upstream = FakeUpstream::start().await;
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = Config::default();
        config.server.listen = "127.0.0.1:0".parse().unwrap();
        config.upstream.base_url = upstream.base_url();
        config.cache.dir = dir.path().join("cache");
        config.cache.similarity_threshold = 0.9;
        config.cache.sweep_interval_secs = 1;
        adjust(&mut config);
        let clock = ManualClock::starting_now();
        let proxy = start(config, clock.clone()).await.expect("proxy starts");
        Harness {
            upstream,
            proxy,
            clock,
            client: http_client(),
            dir,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.proxy.addr, path)
    }

    /// POST /v1/chat/completions with tenant `key` and extra headers.
    pub async fn chat_with(
        &self,
        key: &str,
        headers: &[(&str, &str)],
        body: &Value,
    ) -> reqwest::Response {
        let mut request = self
            .client
            .post(self.url("/v1/chat/completions"))
            .bearer_auth(key)
            .json(body);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.send().await.expect("proxy answers")
    }

    pub async fn chat(&self, body: &Value) -> Reply {
        Reply::read(self.chat_with(KEY_A, &[], body).await).await
    }

    pub async fn chat_headers(&self, headers: &[(&str, &str)], body: &Value) -> Reply {
        Reply::read(self.chat_with(KEY_A, headers, body).await).await
    }

    pub fn cache(&self) -> &deja::cache::Cache {
        self.proxy.app.cache.as_deref().expect("cache enabled")
    }
}

/// A response read whole: status, cache headers, body (JSON or SSE data payloads).
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub text: String,
}

impl Reply {
    pub async fn read(response: reqwest::Response) -> Reply {
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.expect("body");
        Reply {
            status,
            headers,
            text,
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn cache_status(&self) -> &str {
        self.header("x-deja-cache").unwrap_or("<none>")
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("{e}: {}", self.text))
    }

    /// The message content of a JSON completion or of an SSE stream.
    pub fn content(&self) -> String {
        if self.is_stream() {
            self.chunks()
                .iter()
                .filter_map(|c| {
                    c.pointer("/choices/0/delta/content")?
                        .as_str()
                        .map(String::from)
                })
                .collect()
        } else {
            self.json()["choices"][0]["message"]["content"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        }
    }

    pub fn is_stream(&self) -> bool {
        self.header("content-type")
            .is_some_and(|t| t.starts_with("text/event-stream"))
    }

    /// SSE `data:` payloads as JSON (without the final `[DONE]`).
    pub fn chunks(&self) -> Vec<Value> {
        self.data_lines()
            .into_iter()
            .filter(|d| d != "[DONE]")
            .map(|d| serde_json::from_str(&d).unwrap_or_else(|e| panic!("{e}: {d}")))
            .collect()
    }

    pub fn data_lines(&self) -> Vec<String> {
        self.text
            .lines()
            .filter_map(|line| line.strip_prefix("data: "))
            .map(String::from)
            .collect()
    }

    pub fn ends_with_done(&self) -> bool {
        self.data_lines().last().map(String::as_str) == Some("[DONE]")
    }
}

/// A chat request with a system prompt and one user message.
pub fn ask(question: &str) -> Value {
    json!({
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": question}
        ]
    })
}

/// The same request, streaming.
pub fn ask_stream(question: &str, include_usage: bool) -> Value {
    let mut body = ask(question);
    body["stream"] = json!(true);
    if include_usage {
        body["stream_options"] = json!({"include_usage": true});
    }
    body
}

/// A unit vector in the first two dimensions of the fake's 64-d space with the given cosine
/// to `axis()`.
pub fn at_cosine(cosine: f32) -> Vec<f32> {
    let mut v = vec![0.0; super::fake_upstream::EMBED_DIM];
    v[0] = cosine;
    v[1] = (1.0 - cosine * cosine).sqrt();
    v
}

pub fn axis() -> Vec<f32> {
    at_cosine(1.0)
}
