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
    let proxy = deja::server::start(config, clock.clone())
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

mod embeddings;
mod files;
mod managed_keys;
