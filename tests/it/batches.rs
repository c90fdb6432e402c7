//! The Batch API through deja (in-process, port 0) and the fake upstream's Files and Batches
//! API: cached lines answered by deja, repeated lines sent once, the merged output in input
//! order, answers written into the cache, tenants, per-line errors, cancel and list.

use std::time::Duration;

use crate::support::admin::{metric, with_admin};
use crate::support::fake_upstream::{CHAT_PATH, deterministic_answer};
use crate::support::proxy::{Harness, KEY_A, KEY_B, Reply, ask};
use serde_json::{Value, json};

async fn harness() -> Harness {
    let h = Harness::with(with_admin).await;
    h.upstream.set_deterministic(true);
    h
}

/// One input line asking `question` at the chat endpoint.
fn line(custom_id: &str, question: &str) -> Value {
    json!({"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
        "body": ask(question)})
}

fn jsonl(lines: &[Value]) -> String {
    lines.iter().map(|l| format!("{l}\n")).collect()
}

/// Uploads `content` through deja (relayed to the upstream) as a batch input file.
async fn upload(h: &Harness, key: &str, content: &str) -> String {
    let boundary = "test-boundary-7f3a";
    let body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"in.jsonl\"\r\n\
         Content-Type: application/jsonl\r\n\r\n{content}\r\n--{boundary}--\r\n"
    );
    let response = h
        .client
        .post(h.url("/v1/files"))
        .bearer_auth(key)
        .header(
            "content-type",
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(body)
        .send()
        .await
        .expect("upload");
    assert_eq!(response.status(), 200);
    let file: Value = response.json().await.expect("file json");
    file["id"].as_str().expect("file id").to_string()
}

async fn create(h: &Harness, key: &str, input_file_id: &str) -> (u16, Value) {
    let response = h
        .client
        .post(h.url("/v1/batches"))
        .bearer_auth(key)
        .json(
            &json!({"input_file_id": input_file_id, "endpoint": "/v1/chat/completions",
            "completion_window": "24h", "metadata": {"run": "nightly"}}),
        )
        .send()
        .await
        .expect("create");
    let status = response.status().as_u16();
    (status, response.json().await.expect("batch json"))
}

async fn get(h: &Harness, key: &str, path: &str) -> (u16, String) {
    let response = h
        .client
        .get(h.url(path))
        .bearer_auth(key)
        .send()
        .await
        .expect("get");
    let status = response.status().as_u16();
    (status, response.text().await.expect("body"))
}

/// Polls until the batch has ended (panics after 10 s).
async fn ended(h: &Harness, id: &str) -> Value {
    for _ in 0..500 {
        let (status, text) = get(h, KEY_A, &format!("/v1/batches/{id}")).await;
        assert_eq!(status, 200, "{text}");
        let batch: Value = serde_json::from_str(&text).expect("json");
        if !matches!(
            batch["status"].as_str(),
            Some("validating" | "in_progress" | "finalizing" | "cancelling")
        ) {
            return batch;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("batch {id} did not end");
}

/// The lines of a deja-served file.
async fn file_lines(h: &Harness, id: &Value) -> Vec<Value> {
    let id = id.as_str().expect("a file id");
    assert!(id.starts_with("file-deja-"), "{id}");
    let (status, text) = get(h, KEY_A, &format!("/v1/files/{id}/content")).await;
    assert_eq!(status, 200, "{text}");
    text.lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect()
}

fn custom_ids(lines: &[Value]) -> Vec<&str> {
    lines
        .iter()
        .map(|l| l["custom_id"].as_str().unwrap_or_default())
        .collect()
}

fn content(line: &Value) -> &str {
    line["response"]["body"]["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_default()
}

const CACHED_A: &str = "Which river flows through Vienna?";
const CACHED_B: &str = "Name a prime number larger than seven.";
const NEW_C: &str = "How do penguins keep their eggs warm?";
const NEW_D: &str = "Suggest a title for a sailing novel.";
const NEW_E: &str = "Explain what a compiler backend does.";

#[tokio::test]
async fn cached_lines_are_answered_repeats_sent_once_and_answers_stored() {
    let h = harness().await;
    h.upstream.set_batch_polls(2);
    for question in [CACHED_A, CACHED_B] {
        assert_eq!(h.chat(&ask(question)).await.status, 200);
    }
    assert_eq!(h.upstream.calls(CHAT_PATH), 2);
    let input = jsonl(&[
        line("a", CACHED_A),
        line("c", NEW_C),
        line("d", NEW_D),
        line("c-again", NEW_C),
        line("b", CACHED_B),
        line("e", NEW_E),
    ]);
    let file = upload(&h, KEY_A, &input).await;
    let (status, batch) = create(&h, KEY_A, &file).await;
    assert_eq!(status, 200, "{batch}");
    assert!(batch["id"].as_str().unwrap().starts_with("batch_deja_"));
    assert_eq!(batch["object"], "batch");
    assert_eq!(batch["input_file_id"], file.as_str());
    assert_eq!(batch["status"], "in_progress");
    assert_eq!(batch["metadata"], json!({"run": "nightly"}));
    assert_eq!(batch["request_counts"]["total"], 6);

    // The upstream batch holds the uncached distinct lines only, in input order.
    let sent = h.upstream.batch_lines();
    assert_eq!(custom_ids(&sent), ["c", "d", "e"]);
    assert_eq!(h.upstream.batches_created(), 1);

    let done = ended(&h, batch["id"].as_str().unwrap()).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(
        done["request_counts"],
        json!({"total": 6, "completed": 6, "failed": 0})
    );
    assert!(done["error_file_id"].is_null());
    assert!(done["completed_at"].is_u64());
    let output = file_lines(&h, &done["output_file_id"]).await;
    assert_eq!(custom_ids(&output), ["a", "c", "d", "c-again", "b", "e"]);
    let questions = [CACHED_A, NEW_C, NEW_D, NEW_C, CACHED_B, NEW_E];
    for (line, question) in output.iter().zip(questions) {
        assert_eq!(line["response"]["status_code"], 200, "{line}");
        assert_eq!(content(line), deterministic_answer(question), "{line}");
        assert!(line["error"].is_null());
        assert!(line["id"].as_str().unwrap().starts_with("batch_req_"));
    }
    // The file object deja serves for its own file id.
    let (status, text) = get(
        &h,
        KEY_A,
        &format!("/v1/files/{}", done["output_file_id"].as_str().unwrap()),
    )
    .await;
    assert_eq!(status, 200);
    let object: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(object["object"], "file");
    assert_eq!(object["purpose"], "batch_output");

    // A line that was sent upstream is now an exact hit for the synchronous call.
    let reply = h.chat(&ask(NEW_D)).await;
    assert_eq!(reply.cache_status(), "hit");
    assert_eq!(reply.header("x-deja-match"), Some("exact"));
    assert_eq!(reply.content(), deterministic_answer(NEW_D));
    assert_eq!(h.upstream.calls(CHAT_PATH), 2);

    let text = h.metrics().await;
    for (outcome, count) in [("cached", 2.0), ("deduplicated", 1.0), ("upstream", 3.0)] {
        let series = format!("deja_batch_lines_total{{outcome=\"{outcome}\"}}");
        assert_eq!(metric(&text, &series), count, "{series}");
    }
    assert_eq!(metric(&text, "deja_batches_created_total"), 1.0);
}

#[tokio::test]
async fn an_all_cached_batch_completes_at_once_without_an_upstream_batch() {
    let h = harness().await;
    for question in [CACHED_A, CACHED_B] {
        h.chat(&ask(question)).await;
    }
    let input = jsonl(&[
        line("1", CACHED_A),
        line("2", CACHED_B),
        line("3", CACHED_A),
    ]);
    let file = upload(&h, KEY_A, &input).await;
    let (status, batch) = create(&h, KEY_A, &file).await;
    assert_eq!(status, 200, "{batch}");
    assert_eq!(batch["status"], "completed");
    assert_eq!(
        batch["request_counts"],
        json!({"total": 3, "completed": 3, "failed": 0})
    );
    assert_eq!(h.upstream.batches_created(), 0);
    assert!(h.upstream.batch_lines().is_empty());
    let output = file_lines(&h, &batch["output_file_id"]).await;
    assert_eq!(custom_ids(&output), ["1", "2", "3"]);
    assert_eq!(content(&output[2]), deterministic_answer(CACHED_A));
    // Each line has its own answer id, as separate synchronous hits would.
    let ids: Vec<&Value> = output
        .iter()
        .map(|l| &l["response"]["body"]["id"])
        .collect();
    assert_ne!(ids[0], ids[2]);
}

#[tokio::test]
async fn another_tenants_batch_and_files_are_not_found() {
    let h = harness().await;
    h.chat(&ask(CACHED_A)).await;
    let file = upload(&h, KEY_A, &jsonl(&[line("1", CACHED_A)])).await;
    let (_, batch) = create(&h, KEY_A, &file).await;
    let id = batch["id"].as_str().unwrap();
    let output = batch["output_file_id"].as_str().unwrap();
    for path in [
        format!("/v1/batches/{id}"),
        format!("/v1/files/{output}"),
        format!("/v1/files/{output}/content"),
    ] {
        let (status, text) = get(&h, KEY_B, &path).await;
        assert_eq!(status, 404, "{path}: {text}");
        let (status, _) = get(&h, KEY_A, &path).await;
        assert_eq!(status, 200, "{path}");
    }
    let cancel = h
        .client
        .post(h.url(&format!("/v1/batches/{id}/cancel")))
        .bearer_auth(KEY_B)
        .send()
        .await
        .unwrap();
    assert_eq!(cancel.status(), 404);
    let (_, list) = get(&h, KEY_B, "/v1/batches").await;
    let list: Value = serde_json::from_str(&list).unwrap();
    assert_eq!(list["data"], json!([]));
    let (_, list) = get(&h, KEY_A, "/v1/batches").await;
    let list: Value = serde_json::from_str(&list).unwrap();
    assert_eq!(list["object"], "list");
    assert_eq!(list["data"][0]["id"], id);
    assert_eq!(list["first_id"], id);
    assert_eq!(list["has_more"], false);
}

#[tokio::test]
async fn lines_with_a_bad_body_end_in_the_error_file_and_the_rest_complete() {
    let h = harness().await;
    let mut wrong_shape = line("wrong-shape", NEW_C);
    wrong_shape["body"]["messages"] = json!("not a list");
    let mut not_an_object = line("not-an-object", NEW_D);
    not_an_object["body"] = json!("hello");
    let input = jsonl(&[
        line("first", NEW_C),
        wrong_shape,
        not_an_object,
        line("last", NEW_E),
    ]);
    let file = upload(&h, KEY_A, &input).await;
    let (status, batch) = create(&h, KEY_A, &file).await;
    assert_eq!(status, 200, "{batch}");
    let done = ended(&h, batch["id"].as_str().unwrap()).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(
        done["request_counts"],
        json!({"total": 4, "completed": 2, "failed": 2})
    );
    let output = file_lines(&h, &done["output_file_id"]).await;
    assert_eq!(custom_ids(&output), ["first", "last"]);
    let errors = file_lines(&h, &done["error_file_id"]).await;
    assert_eq!(custom_ids(&errors), ["wrong-shape", "not-an-object"]);
    // The upstream's own answer to the wrong shape (deja could not plan it, so sent it)...
    assert_eq!(errors[0]["response"]["status_code"], 400);
    assert_eq!(errors[0]["response"]["body"]["error"]["param"], "messages");
    // ...and deja's, as the synchronous call gets it, to a body that is not an object.
    assert_eq!(errors[1]["response"]["status_code"], 400);
    assert_eq!(
        errors[1]["response"]["body"]["error"]["type"],
        "invalid_request_error"
    );
    assert_eq!(
        custom_ids(&h.upstream.batch_lines()),
        ["first", "wrong-shape", "last"]
    );
}

#[tokio::test]
async fn cancelling_keeps_the_cached_answers_and_fails_the_lines_not_run() {
    let h = harness().await;
    h.upstream.set_batch_polls(100);
    h.chat(&ask(CACHED_A)).await;
    let file = upload(&h, KEY_A, &jsonl(&[line("a", CACHED_A), line("c", NEW_C)])).await;
    let (_, batch) = create(&h, KEY_A, &file).await;
    let id = batch["id"].as_str().unwrap();
    let cancel = h
        .client
        .post(h.url(&format!("/v1/batches/{id}/cancel")))
        .bearer_auth(KEY_A)
        .send()
        .await
        .unwrap();
    assert_eq!(cancel.status(), 200);
    let cancelling: Value = cancel.json().await.unwrap();
    assert_eq!(cancelling["status"], "cancelling");
    assert!(cancelling["cancelling_at"].is_u64());
    let done = ended(&h, id).await;
    assert_eq!(done["status"], "cancelled", "{done}");
    assert!(done["cancelled_at"].is_u64());
    let output = file_lines(&h, &done["output_file_id"]).await;
    assert_eq!(custom_ids(&output), ["a"]);
    let errors = file_lines(&h, &done["error_file_id"]).await;
    assert_eq!(errors[0]["custom_id"], "c");
    assert_eq!(errors[0]["error"]["code"], "batch_cancelled");
    assert!(errors[0]["response"].is_null());
    // An ended batch cannot be cancelled.
    let again = h
        .client
        .post(h.url(&format!("/v1/batches/{id}/cancel")))
        .bearer_auth(KEY_A)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 409);
}

#[tokio::test]
async fn an_unreadable_input_file_gets_the_upstreams_error() {
    let h = harness().await;
    let (status, body) = create(&h, KEY_A, "file-doesnotexist").await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(
        body["error"]["message"],
        "No such File object: file-doesnotexist"
    );
    assert_eq!(h.upstream.batches_created(), 0);
}

/// The official Python SDK (`files.create`, `batches.create`, `retrieve`, `files.content`)
/// against deja: tests/e2e/openai_sdk_batches.py. Needs the SDK as `openai_sdk` does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_python_sdk_runs_a_batch_through_deja() {
    use crate::openai_sdk::{KillOnDrop, python};
    use std::process::{Command, Stdio};

    let h = harness().await;
    h.upstream.set_batch_polls(2);
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/openai_sdk_batches.py");
    let (stdout_path, stderr_path) = (h.dir.path().join("stdout"), h.dir.path().join("stderr"));
    let mut command = Command::new(python());
    command
        .arg("-B")
        .arg(&script)
        .env("OPENAI_BASE_URL", h.url("/v1"))
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env("no_proxy", "127.0.0.1,localhost")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout_path).unwrap())
        .stderr(std::fs::File::create(&stderr_path).unwrap());
    for name in ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "OPENAI_API_KEY"] {
        command
            .env_remove(name)
            .env_remove(name.to_ascii_lowercase());
    }
    for name in ["OPENAI_ORG_ID", "OPENAI_PROJECT_ID", "OPENAI_LOG"] {
        command.env_remove(name);
    }
    let mut child = KillOnDrop(command.spawn().expect("run python"));
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.0.try_wait().expect("try_wait") {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "script still running");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let stdout = std::fs::read_to_string(&stdout_path).unwrap_or_default();
    let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    assert!(
        status.success(),
        "{status}\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    // One synchronous miss; the batch sent its one new question once, nothing else.
    assert_eq!(h.upstream.calls(CHAT_PATH), 1, "{stdout}");
    assert_eq!(custom_ids(&h.upstream.batch_lines()), ["new"], "{stdout}");
}

#[tokio::test]
async fn a_batch_survives_a_restart_and_finishes_after_it() {
    let h = harness().await;
    h.upstream.set_batch_polls(2);
    h.chat(&ask(CACHED_A)).await;
    let file = upload(&h, KEY_A, &jsonl(&[line("a", CACHED_A), line("c", NEW_C)])).await;
    let (_, batch) = create(&h, KEY_A, &file).await;
    assert_eq!(batch["status"], "in_progress");
    let id = batch["id"].as_str().unwrap().to_string();
    let Harness {
        upstream,
        proxy,
        client,
        dir,
        ..
    } = h;
    proxy.shutdown().await;

    let mut config = deja::config::Config::default();
    config.server.listen = "127.0.0.1:0".parse().unwrap();
    config.upstream.base_url = upstream.base_url();
    config.cache.dir = dir.path().join("cache");
    config.cache.similarity_threshold = 0.9;
    let clock = deja::clock::ManualClock::starting_now();
    let proxy = deja::app::server::start(config, clock.clone())
        .await
        .expect("restarts");
    let h = Harness {
        upstream,
        proxy,
        clock,
        client,
        dir,
    };
    let done = ended(&h, &id).await;
    assert_eq!(done["status"], "completed", "{done}");
    let output = file_lines(&h, &done["output_file_id"]).await;
    assert_eq!(custom_ids(&output), ["a", "c"]);
    assert_eq!(content(&output[1]), deterministic_answer(NEW_C));
    assert_eq!(h.chat(&ask(NEW_C)).await.cache_status(), "hit");
}

#[tokio::test]
async fn an_input_file_larger_than_deja_reads_is_relayed_as_the_upstreams_batch() {
    let h = harness().await;
    let lines: Vec<Value> = (0..20)
        .map(|i| line(&format!("l{i}"), &format!("question number {i}")))
        .collect();
    let file = upload(&h, KEY_A, &jsonl(&lines)).await;
    // Smaller than the file from now on (a reload, as an operator would make it).
    let mut config = (**h.proxy.app.config()).clone();
    config.server.max_body_bytes = 1024;
    h.proxy.app.replace_config(config);
    let (status, batch) = create(&h, KEY_A, &file).await;
    assert_eq!(status, 200, "{batch}");
    let id = batch["id"].as_str().unwrap();
    assert!(!id.starts_with("batch_deja_"), "{id}");
    assert_eq!(batch["input_file_id"], file.as_str());
    assert_eq!(h.upstream.batch_lines().len(), 20);
}

#[tokio::test]
async fn a_reworded_line_is_a_semantic_hit_as_the_synchronous_call_would_be() {
    use crate::support::proxy::{at_cosine, axis};
    let h = harness().await;
    let (asked, reworded) = ("What is photosynthesis?", "Explain photosynthesis briefly.");
    h.upstream.set_embedding(asked, axis());
    h.upstream.set_embedding(reworded, at_cosine(0.97));
    h.chat(&ask(asked)).await;
    let file = upload(&h, KEY_A, &jsonl(&[line("r", reworded)])).await;
    let (_, batch) = create(&h, KEY_A, &file).await;
    assert_eq!(batch["status"], "completed", "{batch}");
    assert_eq!(h.upstream.batches_created(), 0);
    let output = file_lines(&h, &batch["output_file_id"]).await;
    assert_eq!(content(&output[0]), deterministic_answer(asked));
}

mod managed_keys {
    //! Managed mode: batch calls need a deja key, and the lines a batch sends upstream count
    //! against it as their synchronous calls would.

    use super::*;
    use crate::support::admin::{key, managed};
    use deja::config::Price;

    const ALICE: &str = "sk-deja-alice-secret";
    const BOB: &str = "sk-deja-bob-secret";

    fn error_of(body: &Value) -> (&str, &str) {
        let error = &body["error"];
        (
            error["type"].as_str().unwrap_or_default(),
            error["code"].as_str().unwrap_or_default(),
        )
    }

    /// A dollar a token for the lines' model; relayed calls (uploads) cost nothing.
    fn priced(c: &mut deja::config::Config) {
        let price = |usd: f64| Price {
            input_per_mtok: usd * 1_000_000.0,
            output_per_mtok: usd * 1_000_000.0,
        };
        c.pricing.insert("gpt-4o-mini".into(), price(1.0));
        c.pricing.insert("*".into(), price(0.0));
    }

    async fn spent(h: &Harness, id: &str) -> f64 {
        let stats = h.admin("GET", "/admin/stats", None).await.json();
        let keys = stats["keys"].as_array().expect("keys");
        let key = keys.iter().find(|k| k["id"] == id).expect("the key");
        key["spent_usd"].as_f64().expect("spent")
    }

    #[tokio::test]
    async fn batch_calls_without_a_known_key_get_401() {
        let h = managed(vec![key("alice", ALICE)], |_| {}).await;
        let file = upload(&h, ALICE, &jsonl(&[line("1", NEW_C)])).await;
        for secret in ["", "sk-deja-mallory"] {
            let (status, body) = create(&h, secret, &file).await;
            assert_eq!(status, 401, "{body}");
            assert_eq!(
                error_of(&body),
                ("invalid_request_error", "invalid_api_key")
            );
            for path in [
                "/v1/batches",
                "/v1/batches/batch_deja_0123",
                "/v1/files/file-deja-0123",
                "/v1/files/file-deja-0123/content",
            ] {
                let (status, text) = get(&h, secret, path).await;
                assert_eq!(status, 401, "{path}: {text}");
            }
        }
        assert_eq!(h.upstream.batches_created(), 0);
        let (status, body) = create(&h, ALICE, &file).await;
        assert_eq!(status, 200, "{body}");
    }

    #[tokio::test]
    async fn each_line_sent_is_a_request_of_the_keys_rpm() {
        let mut alice = key("alice", ALICE);
        alice.rpm = 4;
        let h = managed(vec![alice], |_| {}).await;
        let four: Vec<Value> = (0..4)
            .map(|i| line(&format!("l{i}"), &format!("question number {i}")))
            .collect();
        // The upload is request 1: three are left, and the batch would send four.
        let file = upload(&h, ALICE, &jsonl(&four)).await;
        let (status, body) = create(&h, ALICE, &file).await;
        assert_eq!(status, 429, "{body}");
        assert_eq!(error_of(&body), ("requests", "rate_limit_exceeded"));
        assert_eq!(h.upstream.batches_created(), 0);
        // Nothing was taken by the refusal: an upload and a batch of two still fit.
        let file = upload(&h, ALICE, &jsonl(&four[..2])).await;
        let (status, body) = create(&h, ALICE, &file).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(h.upstream.batches_created(), 1);
        // And that was the minute's last request.
        let (status, _) = get(&h, ALICE, "/v1/batches").await;
        assert_eq!(status, 429);
    }

    #[tokio::test]
    async fn a_batch_over_the_keys_tokens_or_budget_is_refused() {
        let mut alice = key("alice", ALICE);
        alice.tpm = 1000;
        let mut bob = key("bob", BOB);
        bob.budget_usd = Some(30.0);
        let h = managed(vec![alice, bob], priced).await;
        // Four lines of ~300 tokens each: more than a minute of alice's 1,000.
        let lines: Vec<Value> = (0..4)
            .map(|i| {
                let mut line = line(&format!("l{i}"), &format!("question number {i}"));
                line["body"]["max_tokens"] = json!(300);
                line
            })
            .collect();
        let file = upload(&h, ALICE, &jsonl(&lines)).await;
        let (status, body) = create(&h, ALICE, &file).await;
        assert_eq!(status, 429, "{body}");
        assert_eq!(error_of(&body), ("tokens", "rate_limit_exceeded"));
        // Two lines of ~40 prompt tokens at a dollar a token: more than bob's $30.
        let file = upload(&h, BOB, &jsonl(&[line("c", NEW_C), line("d", NEW_D)])).await;
        let (status, body) = create(&h, BOB, &file).await;
        assert_eq!(status, 429, "{body}");
        assert_eq!(
            error_of(&body),
            ("insufficient_quota", "insufficient_quota")
        );
        assert_eq!(h.upstream.batches_created(), 0);
        assert_eq!(h.upstream.calls("/v1/chat/completions"), 0);
    }

    #[tokio::test]
    async fn a_limited_keys_batch_too_large_to_read_is_refused_not_relayed() {
        let mut alice = key("alice", ALICE);
        alice.rpm = 100;
        let h = managed(vec![alice, key("bob", BOB)], |_| {}).await;
        let lines: Vec<Value> = (0..20)
            .map(|i| line(&format!("l{i}"), &format!("question number {i}")))
            .collect();
        let file = upload(&h, ALICE, &jsonl(&lines)).await;
        let mut config = (**h.proxy.app.config()).clone();
        config.server.max_body_bytes = 1024;
        h.proxy.app.replace_config(config);
        let (status, body) = create(&h, ALICE, &file).await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(body["error"]["param"], "input_file_id");
        assert_eq!(h.upstream.batches_created(), 0);
        // A key without limits has nothing to count: its batch is relayed, as without keys.
        let (status, body) = create(&h, BOB, &file).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(h.upstream.batches_created(), 1);
    }

    #[tokio::test]
    async fn a_budget_key_cannot_batch_an_unpriced_model() {
        let mut bob = key("bob", BOB);
        bob.budget_usd = Some(30.0);
        let h = managed(vec![key("alice", ALICE), bob], |_| {}).await;
        // Uploaded by a key without a budget (bob's own relayed upload has no price either).
        let file = upload(&h, ALICE, &jsonl(&[line("c", NEW_C)])).await;
        let (status, body) = create(&h, BOB, &file).await;
        assert_eq!(status, 403, "{body}");
        assert_eq!(
            error_of(&body),
            ("invalid_request_error", "model_not_priced")
        );
        assert_eq!(h.upstream.batches_created(), 0);
    }

    #[tokio::test]
    async fn the_budget_is_settled_from_the_lines_real_usage_and_hits_are_free() {
        let mut alice = key("alice", ALICE);
        alice.budget_usd = Some(1_000_000.0);
        let h = managed(vec![alice], priced).await;
        h.upstream.set_deterministic(true);
        h.upstream.set_batch_polls(2);
        let hit = Reply::read(h.chat_with(ALICE, &[], &ask(CACHED_A)).await).await;
        assert_eq!(hit.status, 200);
        let before = spent(&h, "alice").await;
        let input = jsonl(&[
            line("a", CACHED_A),
            line("c", NEW_C),
            line("d", NEW_D),
            line("c-again", NEW_C),
        ]);
        let file = upload(&h, ALICE, &input).await;
        let (status, batch) = create(&h, ALICE, &file).await;
        assert_eq!(status, 200, "{batch}");
        assert_eq!(batch["status"], "in_progress");
        // Reserved: the estimate of the two distinct lines sent (prompt ~ body / 4).
        let estimate: usize = [NEW_C, NEW_D]
            .iter()
            .map(|q| serde_json::to_vec(&ask(q)).unwrap().len().div_ceil(4))
            .sum();
        let reserved = spent(&h, "alice").await - before;
        assert!(
            (reserved - estimate as f64).abs() < 1e-6,
            "{reserved} vs {estimate}"
        );

        let id = batch["id"].as_str().unwrap();
        let done = loop {
            let (_, text) = get(&h, ALICE, &format!("/v1/batches/{id}")).await;
            let batch: Value = serde_json::from_str(&text).unwrap();
            if batch["status"] == "completed" {
                break batch;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let (_, text) = get(
            &h,
            ALICE,
            &format!(
                "/v1/files/{}/content",
                done["output_file_id"].as_str().unwrap()
            ),
        )
        .await;
        let used: f64 = text
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|l| l["custom_id"] == "c" || l["custom_id"] == "d")
            .map(|l| {
                let usage = &l["response"]["body"]["usage"];
                usage["prompt_tokens"].as_f64().unwrap()
                    + usage["completion_tokens"].as_f64().unwrap()
            })
            .sum();
        assert!((used - estimate as f64).abs() > 1.0, "a test that can tell");
        let settled = spent(&h, "alice").await - before;
        assert!((settled - used).abs() < 1e-6, "{settled} vs {used}");
    }
}

async fn delete(h: &Harness, key: &str, path: &str) -> (u16, Value) {
    let response = h
        .client
        .delete(h.url(path))
        .bearer_auth(key)
        .send()
        .await
        .expect("delete");
    let status = response.status().as_u16();
    (status, response.json().await.expect("json"))
}

#[tokio::test]
async fn a_deja_file_can_be_deleted_by_its_tenant_only() {
    let h = harness().await;
    h.chat(&ask(CACHED_A)).await;
    let file = upload(&h, KEY_A, &jsonl(&[line("1", CACHED_A)])).await;
    let (_, batch) = create(&h, KEY_A, &file).await;
    let output = batch["output_file_id"].as_str().unwrap();
    let path = format!("/v1/files/{output}");
    let (status, _) = delete(&h, KEY_B, &path).await;
    assert_eq!(status, 404);
    let (status, body) = delete(&h, KEY_A, &path).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"id": output, "object": "file", "deleted": true})
    );
    for path in [path.clone(), format!("{path}/content")] {
        let (status, text) = get(&h, KEY_A, &path).await;
        assert_eq!(status, 404, "{path}: {text}");
    }
    let (status, _) = delete(&h, KEY_A, &path).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn batches_and_their_files_expire_after_the_retention() {
    const RETENTION: u64 = 3600;
    let h = Harness::with(|c| {
        with_admin(c);
        c.cache.sweep_interval_secs = 1;
        c.jobs.batch_retention_secs = RETENTION;
    })
    .await;
    h.upstream.set_deterministic(true);
    h.chat(&ask(CACHED_A)).await;
    let file = upload(&h, KEY_A, &jsonl(&[line("1", CACHED_A)])).await;
    let (_, batch) = create(&h, KEY_A, &file).await;
    assert_eq!(batch["status"], "completed", "{batch}");
    let id = batch["id"].as_str().unwrap();
    let output = batch["output_file_id"].as_str().unwrap();
    let (_, text) = get(&h, KEY_A, &format!("/v1/files/{output}")).await;
    let object: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        object["expires_at"].as_u64(),
        Some(object["created_at"].as_u64().unwrap() + RETENTION)
    );
    let store = h.proxy.app.batches.clone().expect("batch store");
    assert_eq!(store.held(), (1, 1));

    // A minute short of the retention: all still there, through a sweep or two.
    h.clock.advance(Duration::from_secs(RETENTION - 60));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(store.held(), (1, 1));
    let paths = [
        format!("/v1/batches/{id}"),
        format!("/v1/files/{output}"),
        format!("/v1/files/{output}/content"),
    ];
    for path in &paths {
        assert_eq!(get(&h, KEY_A, path).await.0, 200, "{path}");
    }

    h.clock.advance(Duration::from_secs(60));
    for path in &paths {
        assert_eq!(get(&h, KEY_A, path).await.0, 404, "{path}");
    }
    let (_, list) = get(&h, KEY_A, "/v1/batches").await;
    assert_eq!(
        serde_json::from_str::<Value>(&list).unwrap()["data"],
        json!([])
    );
    // And the sweep removes them from disk.
    for _ in 0..100 {
        if store.held() == (0, 0) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("not swept: {:?}", store.held());
}

mod embeddings {
    //! Batches for `/v1/embeddings` go through the synchronous call's per-input cache.

    use super::*;
    use crate::support::fake_upstream::EMBEDDINGS_PATH;

    const MODEL: &str = "text-embedding-3-small";

    fn embed_line(custom_id: &str, input: Value) -> Value {
        json!({"custom_id": custom_id, "method": "POST", "url": "/v1/embeddings",
            "body": {"model": MODEL, "input": input}})
    }

    async fn embed(h: &Harness, input: Value) -> (Value, Option<String>) {
        let response = h
            .client
            .post(h.url("/v1/embeddings"))
            .bearer_auth(KEY_A)
            .json(&json!({"model": MODEL, "input": input}))
            .send()
            .await
            .expect("embeddings");
        assert_eq!(response.status(), 200);
        let cached = response
            .headers()
            .get("x-deja-cached-inputs")
            .map(|v| v.to_str().unwrap().to_string());
        (response.json().await.expect("json"), cached)
    }

    fn vectors(body: &Value) -> Vec<Value> {
        body["data"]
            .as_array()
            .expect("data")
            .iter()
            .map(|item| item["embedding"].clone())
            .collect()
    }

    #[tokio::test]
    async fn cached_lines_are_answered_and_answers_stored_per_input() {
        let h = harness().await;
        h.upstream.set_batch_polls(1);
        let (synchronous, _) = embed(&h, json!(["alpha", "beta"])).await;
        let (alpha, beta) = (
            vectors(&synchronous)[0].clone(),
            vectors(&synchronous)[1].clone(),
        );
        assert_eq!(h.upstream.calls(EMBEDDINGS_PATH), 1);
        let input = jsonl(&[
            embed_line("both", json!(["beta", "alpha"])),
            embed_line("one", json!("alpha")),
            embed_line("partly", json!(["gamma", "alpha"])),
            embed_line("partly-again", json!(["gamma", "alpha"])),
        ]);
        let file = upload(&h, KEY_A, &input).await;
        let response = h
            .client
            .post(h.url("/v1/batches"))
            .bearer_auth(KEY_A)
            .json(&json!({"input_file_id": file, "endpoint": "/v1/embeddings",
                "completion_window": "24h"}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let batch: Value = response.json().await.unwrap();
        let id = batch["id"].as_str().unwrap();
        assert!(id.starts_with("batch_deja_"), "{batch}");
        assert_eq!(batch["endpoint"], "/v1/embeddings");
        // Only the line with an uncached input goes upstream, once.
        assert_eq!(custom_ids(&h.upstream.batch_lines()), ["partly"]);

        let done = ended(&h, id).await;
        assert_eq!(done["status"], "completed", "{done}");
        let output = file_lines(&h, &done["output_file_id"]).await;
        assert_eq!(
            custom_ids(&output),
            ["both", "one", "partly", "partly-again"]
        );
        let body = |i: usize| &output[i]["response"]["body"];
        assert_eq!(vectors(body(0)), [beta.clone(), alpha.clone()]);
        assert_eq!(body(0)["object"], "list");
        assert_eq!(body(0)["usage"]["total_tokens"], 0);
        assert_eq!(vectors(body(1)), std::slice::from_ref(&alpha));
        assert_eq!(vectors(body(2))[1], alpha);
        assert_eq!(vectors(body(3)), vectors(body(2)));

        // The batch's answer is now in the synchronous call's cache, per input.
        let (again, cached) = embed(&h, json!(["gamma"])).await;
        assert_eq!(cached.as_deref(), Some("1/1"));
        assert_eq!(vectors(&again)[0], vectors(body(2))[0]);
        assert_eq!(h.upstream.calls(EMBEDDINGS_PATH), 1);
        let text = h.metrics().await;
        let series = "deja_batch_lines_total{outcome=\"cached\"}";
        assert_eq!(metric(&text, series), 2.0);
    }
}

/// How many `GET` requests the fake upstream has seen on paths starting with `prefix` and
/// ending with `suffix`.
fn upstream_gets(h: &Harness, prefix: &str, suffix: &str) -> usize {
    h.upstream
        .requests()
        .iter()
        .filter(|r| r.method == "GET" && r.path.starts_with(prefix) && r.path.ends_with(suffix))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polls_of_two_batches_go_side_by_side_and_one_batch_is_merged_once() {
    let h = harness().await;
    h.upstream.set_batch_polls(2);
    let mut ids = Vec::new();
    for question in [NEW_C, NEW_D] {
        let file = upload(&h, KEY_A, &jsonl(&[line("1", question)])).await;
        let (_, batch) = create(&h, KEY_A, &file).await;
        ids.push(batch["id"].as_str().unwrap().to_string());
    }
    let poll = |id: &str| {
        let request = h
            .client
            .get(h.url(&format!("/v1/batches/{id}")))
            .bearer_auth(KEY_A);
        tokio::spawn(async move {
            let response = request.send().await.expect("poll");
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.expect("json"))
        })
    };

    // A poll of the first batch waits on a slow upstream...
    h.upstream.stall_next_batch_retrieve(Duration::from_secs(3));
    let slow = poll(&ids[0]);
    while upstream_gets(&h, "/v1/batches/", "") == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // ...and a poll of the second is answered meanwhile.
    let (status, text) = get(&h, KEY_A, &format!("/v1/batches/{}", ids[1])).await;
    assert_eq!(status, 200, "{text}");
    assert!(
        !slow.is_finished(),
        "the second batch's poll waited for the first's"
    );
    assert_eq!(slow.await.unwrap().0, 200);

    // Two polls of the batch as it ends: one merges, the other gets its result.
    h.upstream
        .stall_next_batch_retrieve(Duration::from_millis(500));
    let (first, second) = (poll(&ids[0]), poll(&ids[0]));
    let (first, second) = (first.await.unwrap().1, second.await.unwrap().1);
    assert_eq!(first["status"], "completed", "{first}");
    assert_eq!(second["status"], "completed", "{second}");
    assert_eq!(first["output_file_id"], second["output_file_id"]);
    // The two creates read their inputs; the merge read the output once.
    assert_eq!(upstream_gets(&h, "/v1/files/", "/content"), 3);
}

#[tokio::test]
async fn the_files_list_holds_the_callers_deja_files_beside_the_upstreams() {
    let h = harness().await;
    h.chat(&ask(CACHED_A)).await;
    let input = upload(&h, KEY_A, &jsonl(&[line("1", CACHED_A)])).await;
    let (_, batch) = create(&h, KEY_A, &input).await;
    let output = batch["output_file_id"].as_str().unwrap().to_string();
    let list = |key: &'static str, query: &'static str| {
        let h = &h;
        async move {
            let (status, text) = get(h, key, &format!("/v1/files{query}")).await;
            assert_eq!(status, 200, "{text}");
            let list: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(list["object"], "list");
            let ids: Vec<String> = list["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| f["id"].as_str().unwrap().to_string())
                .collect();
            (ids, list)
        }
    };
    let (ids, all) = list(KEY_A, "").await;
    assert_eq!(ids.len(), 2, "{all}");
    assert!(ids.contains(&input) && ids.contains(&output), "{all}");
    assert_eq!(all["has_more"], false);
    assert_eq!(all["first_id"], ids[0].as_str());
    // Another tenant's list has the upstream's files only.
    let (ids, _) = list(KEY_B, "").await;
    assert_eq!(ids, std::slice::from_ref(&input));
    // The purpose filter applies to both.
    assert_eq!(
        list(KEY_A, "?purpose=batch").await.0,
        std::slice::from_ref(&input)
    );
    let outputs = list(KEY_A, "?purpose=batch_output").await.0;
    assert_eq!(outputs, std::slice::from_ref(&output));
    // Pages over the merged list.
    let (first, page) = list(KEY_A, "?limit=1").await;
    assert_eq!(page["has_more"], true);
    let (_, rest) = get(&h, KEY_A, &format!("/v1/files?limit=1&after={}", first[0])).await;
    let rest: Value = serde_json::from_str(&rest).unwrap();
    assert_eq!(rest["has_more"], false);
    let second = rest["data"][0]["id"].as_str().unwrap();
    assert_ne!(second, first[0]);
    assert!([&input, &output].contains(&&second.to_string()));
}
