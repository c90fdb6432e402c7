//! The real `deja` binary across restarts: what it answered before a graceful stop (SIGTERM)
//! or a crash (SIGKILL) is answered from its on-disk cache afterwards, without the upstream;
//! and a bad config stops it at start-up, naming the offending key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::support::fake_upstream::{CHAT_PATH, FakeUpstream, bag_of_words_embedding, cosine};
use crate::support::process::drain;
use http::HeaderMap;
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::sync::mpsc;

/// How long to wait for a log line (start-up includes opening the store) or for an exit.
const PATIENCE: Duration = Duration::from_secs(20);
/// One caller throughout: the tenant (and so the cache partition) must not change on restart.
const AUTH: &str = "Bearer sk-test-restart";
const QUESTION: &str = "What is the capital of France?";
const PARAPHRASE: &str = "Which city is the French capital?";

// === the deja process ===

/// A `deja` child, its JSON log lines and everything it printed. Dropping it kills the
/// process, so none outlives a failed assertion; the output is shown when a test fails.
struct Deja {
    child: Child,
    logs: mpsc::UnboundedReceiver<Value>,
    output: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
    /// From the "deja listening" line (after `start`).
    addr: SocketAddr,
    listening: Value,
}

impl Deja {
    /// Spawns the binary with `config` (hermetic: no `DEJA_*`, `RUST_LOG` or proxy variables
    /// from the environment of whoever runs the tests).
    fn spawn(config: &Path) -> Deja {
        let mut command = Command::new(env!("CARGO_BIN_EXE_deja"));
        for (key, _) in std::env::vars_os() {
            let upper = key.to_string_lossy().to_ascii_uppercase();
            if upper.starts_with("DEJA_") || upper == "RUST_LOG" || upper.ends_with("_PROXY") {
                command.env_remove(&key);
            }
        }
        let mut child = (command.arg("--config").arg(config))
            .env("NO_PROXY", "127.0.0.1,localhost")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn deja");
        let output = Arc::new(Mutex::new(String::new()));
        let (tx, logs) = mpsc::unbounded_channel();
        let readers = vec![
            drain(child.stdout.take().unwrap(), "", output.clone(), tx.clone()),
            drain(child.stderr.take().unwrap(), "stderr: ", output.clone(), tx),
        ];
        let addr = SocketAddr::from(([127, 0, 0, 1], 0));
        let listening = Value::Null;
        Deja {
            child,
            logs,
            output,
            readers,
            addr,
            listening,
        }
    }

    /// Spawns it and waits until it listens.
    async fn start(config: &Path) -> Deja {
        let mut deja = Deja::spawn(config);
        deja.listening = deja.wait_for_log("deja listening").await;
        let addr = deja.listening["fields"]["addr"]
            .as_str()
            .expect("addr field");
        deja.addr = addr.parse().expect("addr is host:port");
        deja
    }

    /// The next log line whose message is `message` (earlier lines are skipped).
    async fn wait_for_log(&mut self, message: &str) -> Value {
        let found = tokio::time::timeout(PATIENCE, async {
            while let Some(line) = self.logs.recv().await {
                if line["fields"]["message"] == message {
                    return Some(line);
                }
            }
            None // stdout closed: deja exited
        });
        match found.await {
            Ok(Some(line)) => line,
            _ => panic!("no {message:?} log line from deja"),
        }
    }

    /// `[entries, indexed vectors]` found in the store at start-up.
    fn loaded(&self) -> Value {
        let fields = &self.listening["fields"];
        json!([fields["entries"], fields["indexed"]])
    }

    /// Waits (without blocking the async runtime) until the process exits.
    async fn exit_status(&mut self) -> ExitStatus {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait on deja") {
                return status;
            }
            assert!(Instant::now() < deadline, "deja did not exit");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGTERM (what `docker stop` sends), then the exit status.
    async fn terminate(&mut self) -> ExitStatus {
        let pid = self.child.id().to_string();
        let kill = Command::new("kill").args(["-TERM", &pid]).status();
        assert!(kill.expect("run kill").success(), "kill -TERM {pid}");
        self.exit_status().await
    }

    /// SIGKILL: no shutdown code runs, nothing is flushed on the way out.
    async fn crash(&mut self) {
        self.child.kill().expect("SIGKILL deja");
        self.exit_status().await;
    }

    /// All it printed; call once it has exited (waits for both pipes to reach EOF).
    fn final_output(&mut self) -> String {
        self.readers
            .drain(..)
            .for_each(|reader| reader.join().unwrap());
        self.output.lock().clone()
    }
}

impl Drop for Deja {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- deja output ---\n{}", self.output.lock());
        }
    }
}

/// Writes `proxy.toml` into `dir`, with the store in `dir/cache`. Debug level for deja so the
/// "stored" line tells when a background insert is done (no sleeping and hoping).
fn write_config(dir: &Path, upstream: &str, threshold: &str) -> PathBuf {
    let path = dir.join("proxy.toml");
    let cache = dir.join("cache");
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n\n[upstream]\nbase_url = \"{upstream}\"\n\n\
         [cache]\ndir = \"{}\"\nsimilarity_threshold = {threshold}\n\n\
         [log]\nformat = \"json\"\nlevel = \"deja=debug,info\"\n",
        cache.display()
    );
    std::fs::write(&path, text).expect("write config");
    path
}

// === requests ===

/// What the test needs from one chat completion through deja.
#[derive(Debug)]
struct Answer {
    headers: HeaderMap,
    content: String,
}

impl Answer {
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).map_or("", |v| v.to_str().unwrap())
    }
}

async fn ask(deja: &Deja, question: &str) -> Answer {
    let body = json!({"model": "gpt-4o-mini", "messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": question},
    ]});
    let url = format!("http://{}/v1/chat/completions", deja.addr);
    let request = crate::support::fake_upstream::http_client().post(url);
    let response = request
        .header("authorization", AUTH)
        .json(&body)
        .send()
        .await;
    let response = response.expect("request to deja");
    assert_eq!(response.status(), 200, "{question:?}");
    let headers = response.headers().clone();
    let json: Value = response.json().await.expect("JSON body");
    let content = json["choices"][0]["message"]["content"].as_str();
    let content = content.expect("content").to_owned();
    Answer { headers, content }
}

fn assert_hit(answer: &Answer, matched: &str, original: &str) {
    let outcome = (answer.header("x-deja-cache"), answer.header("x-deja-match"));
    assert_eq!(outcome, ("hit", matched), "{answer:?}");
    assert_eq!(answer.content, original, "the upstream's original answer");
}

/// An embedding close to `text`'s but not equal: one empty dimension nudged, cosine ≈ 0.995.
fn near(text: &str) -> Vec<f32> {
    let original = bag_of_words_embedding(text);
    let mut vector = original.clone();
    *vector.iter_mut().find(|x| **x == 0.0).unwrap() = 0.1;
    let similarity = cosine(&original, &vector);
    assert!(similarity > 0.9 && similarity < 1.0, "{similarity}");
    vector
}

// === tests ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_survive_a_graceful_restart() {
    let fake = FakeUpstream::start().await;
    fake.set_embedding(PARAPHRASE, near(QUESTION));
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &fake.base_url(), "0.9");

    let mut deja = Deja::start(&config).await;
    let first = ask(&deja, QUESTION).await;
    assert_eq!(first.header("x-deja-cache"), "miss");
    deja.wait_for_log("stored").await;
    let paraphrased = ask(&deja, PARAPHRASE).await;
    assert_hit(&paraphrased, "semantic", &first.content);
    let similarity: f32 = paraphrased.header("x-deja-similarity").parse().unwrap();
    assert!((0.9..1.0).contains(&similarity), "{paraphrased:?}");
    let before = ask(&deja, QUESTION).await;
    assert_hit(&before, "exact", &first.content);
    assert_eq!(fake.calls(CHAT_PATH), 1);
    let status = deja.terminate().await;
    assert!(status.success(), "SIGTERM exits cleanly: {status}");
    // Secrets and prompts stay out of everything deja wrote (logs at debug level, the store).
    let output = deja.final_output();
    assert!(output.contains("deja listening"), "output was captured");
    assert!(!output.contains("sk-test-restart"), "API key in the logs");
    assert!(!output.contains(QUESTION), "prompt text in the logs");
    assert!(
        !dir_contains(dir.path(), b"sk-test-restart"),
        "API key in the store"
    );

    // Same directory, new process (and new port).
    let deja = Deja::start(&config).await;
    assert_eq!(deja.loaded(), json!([1, 1]), "entries, vectors");
    let after = ask(&deja, QUESTION).await;
    assert_hit(&after, "exact", &first.content);
    // The very entry stored before the restart.
    assert_eq!(after.header("x-deja-entry"), before.header("x-deja-entry"));
    assert_hit(&ask(&deja, PARAPHRASE).await, "semantic", &first.content);
    assert_eq!(fake.calls(CHAT_PATH), 1, "no upstream call after restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_threshold_and_a_bad_file_changes_nothing() {
    // Three rewordings, each near the question but apart from each other (a miss stores its
    // own answer, so each check needs a prompt of its own).
    let rewordings = [
        "Which city is the French capital?",
        "Name the capital city of France.",
        "France's capital is which city?",
    ];
    let fake = FakeUpstream::start().await;
    for (k, text) in rewordings.iter().enumerate() {
        let mut vector = bag_of_words_embedding(QUESTION);
        let zero = vector
            .iter()
            .enumerate()
            .filter(|(_, x)| **x == 0.0)
            .nth(k)
            .unwrap()
            .0;
        vector[zero] = 0.1;
        fake.set_embedding(text, vector);
    }
    let dir = tempfile::tempdir().unwrap();
    // 1.0: only identical prompts hit; the rewordings score just below.
    let config = write_config(dir.path(), &fake.base_url(), "1.0");
    let mut deja = Deja::start(&config).await;
    let first = ask(&deja, QUESTION).await;
    deja.wait_for_log("stored").await;
    assert_eq!(
        ask(&deja, rewordings[0]).await.header("x-deja-cache"),
        "miss"
    );

    let hangup = |deja: &Deja| {
        let pid = deja.child.id().to_string();
        let sent = Command::new("kill").args(["-HUP", &pid]).status();
        assert!(sent.expect("run kill").success(), "kill -HUP {pid}");
    };
    // A file that does not validate: logged, and the running threshold stays.
    let text = std::fs::read_to_string(&config).unwrap();
    let bad = text.replace("similarity_threshold = 1.0", "similarity_threshold = 1.5");
    std::fs::write(&config, bad).unwrap();
    hangup(&deja);
    deja.wait_for_log("reload failed; configuration unchanged")
        .await;
    assert_eq!(
        ask(&deja, rewordings[1]).await.header("x-deja-cache"),
        "miss"
    );

    write_config(dir.path(), &fake.base_url(), "0.9");
    hangup(&deja);
    deja.wait_for_log("configuration reloaded").await;
    assert_hit(&ask(&deja, rewordings[2]).await, "semantic", &first.content);
    assert!(deja.terminate().await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_survive_a_crash() {
    let questions = [
        QUESTION,
        "How many legs does a spider have?",
        "Who wrote Hamlet?",
    ];
    let paraphrase = "Count the legs on a spider";
    let fake = FakeUpstream::start().await;
    fake.set_embedding(paraphrase, near(questions[1]));
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &fake.base_url(), "0.9");

    let mut deja = Deja::start(&config).await;
    let mut originals = Vec::new();
    for question in questions {
        let answer = ask(&deja, question).await;
        assert_eq!(answer.header("x-deja-cache"), "miss", "{question:?}");
        deja.wait_for_log("stored").await;
        originals.push(answer.content);
    }
    // sled writes to disk every 200 ms; a crash loses only what was not yet written.
    tokio::time::sleep(Duration::from_secs(1)).await;
    deja.crash().await;

    let deja = Deja::start(&config).await;
    assert_eq!(deja.loaded(), json!([3, 3]), "entries, vectors");
    for (question, original) in questions.iter().zip(&originals) {
        assert_hit(&ask(&deja, question).await, "exact", original);
    }
    assert_hit(&ask(&deja, paraphrase).await, "semantic", &originals[1]);
    assert_eq!(fake.calls(CHAT_PATH), 3, "no question asked upstream twice");
}

#[tokio::test]
async fn out_of_range_threshold_is_refused_at_startup() {
    let dir = tempfile::tempdir().unwrap();
    // The upstream is never contacted: start-up must stop at validation.
    let config = write_config(dir.path(), "http://127.0.0.1:9/v1", "1.5");
    let mut deja = Deja::spawn(&config);
    let status = deja.exit_status().await;
    assert!(!status.success(), "exit status {status}");
    let output = deja.final_output();
    let expected = "stderr: deja: config: `cache.similarity_threshold`";
    assert!(output.contains(expected), "{output}");
}

/// Whether any file under `dir` contains `needle`.
fn dir_contains(dir: &Path, needle: &[u8]) -> bool {
    std::fs::read_dir(dir).unwrap().any(|item| {
        let path = item.unwrap().path();
        if path.is_dir() {
            dir_contains(&path, needle)
        } else {
            let bytes = std::fs::read(&path).unwrap_or_default();
            bytes.windows(needle.len()).any(|w| w == needle)
        }
    })
}

/// Error bodies deja writes itself, its logs (debug level) and its data directory never hold
/// the caller's API key or prompt, whatever went wrong: unreachable or reset upstream, upstream
/// timeout, a relayed upstream error, malformed or oversized bodies, a body that never ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_logs_and_disk_hold_no_key_or_prompt() {
    use crate::support::faulty_upstream::FaultyUpstream;
    use crate::support::process::{DejaProcess, write_config};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const KEY: &str = "sk-test-secret-errors-9f8e7d";
    const PROMPT: &str = "my private question about zebra-quokka-42";
    let faulty = FaultyUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &faulty.base_url(),
        "deja=debug,info",
        "semantic = false",
    );
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "[upstream]\n",
        "[upstream]\ntimeout_secs = 1\nidle_timeout_secs = 1\n",
    );
    let text = text.replace(
        "[server]\n",
        "[server]\nmax_body_bytes = 4096\nbody_timeout_secs = 1\n",
    );
    std::fs::write(&config, text).unwrap();
    let mut deja = DejaProcess::start(&config).await;
    let client = crate::support::fake_upstream::http_client();
    let url = format!("http://{}/v1/chat/completions", deja.addr);
    let body = |fault: &str| {
        json!({"model": "gpt-4o-mini", "messages": [
            {"role": "user", "content": format!("{PROMPT} fault:{fault}")}]})
        .to_string()
    };
    let mut bodies = Vec::new();
    for (request_body, status) in [
        (body("reset"), 502),
        (body("cut_json"), 502),
        (body("slow_headers"), 504),
        (body("error_500"), 500),
        (
            format!(r#"{{"model":"m","messages":[{{"role":"user","content":"{PROMPT}"}}"#),
            400,
        ),
        (
            format!(r#"{{"messages":"{PROMPT}{}"}}"#, "x".repeat(5000)),
            413,
        ),
    ] {
        let response = client
            .post(&url)
            .header("authorization", format!("Bearer {KEY}"))
            .header("content-type", "application/json")
            .body(request_body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), status);
        bodies.push(response.text().await.unwrap());
    }
    // A body that never ends: 408.
    let mut stream = tokio::net::TcpStream::connect(deja.addr).await.unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n\
         Content-Length: 500\r\n\r\n{{\"messages\":\"{PROMPT}"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = vec![0u8; 4096];
    let n = stream.read(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]).into_owned();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    bodies.push(answer);

    for body in &bodies {
        assert!(!body.contains(KEY), "API key in an error body: {body}");
        assert!(!body.contains(PROMPT), "prompt in an error body: {body}");
    }
    deja.crash().await;
    let output = deja.output();
    assert!(
        output.contains("upstream failed"),
        "errors were logged: {output}"
    );
    assert!(!output.contains(KEY), "API key in the logs");
    assert!(!output.contains(PROMPT), "prompt in the logs");
    assert!(!dir_contains(dir.path(), KEY.as_bytes()), "API key on disk");
}
