//! deja as the official `openai` SDKs see it: tests/e2e/openai_sdk.py (Python) and
//! tests/e2e/node/openai_sdk.mjs (Node) drive an in-process deja as apps do. Every kind of
//! call goes twice (plain, streamed, Structured Outputs, a conversation, a tool call,
//! Responses) and every repeat must be a cache hit the SDK parses like the original (a
//! Responses hit can be retrieved and chained from by its id); then a reworded question, a
//! stream the app hangs up on, a burst of one question, deja's controls as request headers and
//! half-cached embeddings. The scripts' own comments say what each step expects; here the
//! upstream's calls are counted against that.
//!
//! Needs a Python with the SDK: `SDK_TEST_PYTHON`, else `.venv/bin/python` as made by
//! `scripts/setup-python.sh`; and Node with the SDK in tests/e2e/node/node_modules, as made by
//! `scripts/setup-node.sh` (`SDK_TEST_NODE` names another `node`). `scripts/test.sh` runs both
//! first. Set `SDK_TEST_*` for these tests only: deja takes every `DEJA_*` variable for a
//! config key and refuses unknown ones.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::fake_upstream::{CHAT_PATH, FakeUpstream};
use deja::clock::SystemClock;
use deja::config::Config;

/// Generous: the first run of the script also imports (and byte-compiles) the SDK.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(120);

/// The interpreter to use, or a panic that says how to get one.
pub(crate) fn python() -> PathBuf {
    if let Some(python) = std::env::var_os("SDK_TEST_PYTHON") {
        return PathBuf::from(python);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    if venv.exists() {
        return venv;
    }
    panic!(
        "run scripts/setup-python.sh (or set SDK_TEST_PYTHON) to create the venv with the openai SDK"
    );
}

/// The Node interpreter and the SDK test's directory (its `node_modules` holds the SDK), or a
/// panic that says how to get them.
fn node() -> (PathBuf, PathBuf) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/node");
    assert!(
        dir.join("node_modules/openai/package.json").exists(),
        "run scripts/setup-node.sh to install the openai Node SDK into {}",
        dir.display()
    );
    let node =
        std::env::var_os("SDK_TEST_NODE").map_or_else(|| PathBuf::from("node"), PathBuf::from);
    (node, dir)
}

/// Kills the script if the test fails or times out before it exits.
pub(crate) struct KillOnDrop(pub(crate) std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `script` with `program` against an in-process deja before a fake upstream, and checks
/// what reached the upstream: one call per pair of identical requests, and one more for each
/// repeat the script saw answered as a miss where that was right.
async fn drive_through_deja(
    program: &Path,
    interpreter_args: &[&str],
    script: &Path,
    expected_chat_calls: usize,
    chunk_delay: Duration,
) {
    let fake = FakeUpstream::start().await;
    fake.set_chunk_delay(chunk_delay);
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    config.server.listen = "127.0.0.1:0".parse().unwrap();
    config.upstream.base_url = fake.base_url();
    config.cache.dir = dir.path().join("cache");
    config.cache.similarity_threshold = 0.9;
    let server = deja::server::start(config, Arc::new(SystemClock))
        .await
        .expect("start deja");

    // The script's output goes to files, so no pipe can fill while it runs.
    let (stdout_path, stderr_path) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let name = script.file_name().unwrap().to_string_lossy().into_owned();
    let mut command = Command::new(program);
    command
        .args(interpreter_args)
        .arg(script)
        .env("OPENAI_BASE_URL", format!("http://{}/v1", server.addr))
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env("no_proxy", "127.0.0.1,localhost")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout_path).unwrap())
        .stderr(std::fs::File::create(&stderr_path).unwrap());
    // Loopback only, and nothing from the environment may change whose cache the SDK reads.
    for name in ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "OPENAI_API_KEY"] {
        command
            .env_remove(name)
            .env_remove(name.to_ascii_lowercase());
    }
    for name in [
        "OPENAI_ORG_ID",
        "OPENAI_PROJECT_ID",
        "OPENAI_LOG",
        "NODE_OPTIONS",
    ] {
        command.env_remove(name);
    }
    let spawned = command.spawn();
    let mut script_process = KillOnDrop(spawned.unwrap_or_else(|err| {
        panic!("cannot run {}: {err}", program.display());
    }));

    // Poll instead of blocking, so this runtime keeps serving deja and the fake upstream.
    let deadline = Instant::now() + SCRIPT_TIMEOUT;
    let status = loop {
        if let Some(status) = script_process.0.try_wait().expect("try_wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "{name} still running after {SCRIPT_TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let stdout = std::fs::read_to_string(&stdout_path).unwrap_or_default();
    let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    assert!(
        status.success(),
        "{name} exited with {status}\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    print!("{stdout}");

    // One miss per pair; every repeat was served by deja, but for the repeat of a stream the
    // script hung up on, which may rightly have been a miss (the script reports it from the
    // headers). Responses: two misses and the request chained from a hit.
    let repeats_upstream: usize = stdout
        .lines()
        .find_map(|line| line.strip_prefix("repeats that went upstream: "))
        .and_then(|count| count.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} did not report its repeats\n{stdout}"));
    assert!(repeats_upstream <= 1, "{stdout}");
    assert_eq!(
        fake.calls(CHAT_PATH),
        expected_chat_calls + repeats_upstream,
        "upstream chat calls\n{stdout}"
    );
    assert_eq!(
        fake.calls("/v1/responses"),
        3,
        "upstream responses calls\n{stdout}"
    );
    // The half-cached embeddings batch sent only its new input upstream (the script's last call).
    let last = fake
        .last_request("/v1/embeddings")
        .expect("embeddings calls");
    let sent: serde_json::Value = serde_json::from_slice(&last.body).unwrap();
    assert_eq!(sent["input"], serde_json::json!(["epsilon"]));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_python_sdk_gets_cache_hits_it_can_parse() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/openai_sdk.py");
    // Plain, the reworded question, the other namespace's and temperature's misses, stream,
    // the closed stream, structured and its plain twin, the burst of eight, the conversation's
    // two turns and tool call: one upstream call each (the refused request none; the closed
    // stream's repeat counted apart). Chunks 20 ms apart, so the script's close lands
    // mid-stream. -B: no __pycache__ in the source tree.
    drive_through_deja(&python(), &["-B"], &script, 12, Duration::from_millis(20)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_node_sdk_gets_cache_hits_it_can_parse() {
    let (node, dir) = node();
    // Plain, the reworded question, the other namespace's and temperature's misses, stream, the
    // SDK's stream helper, the aborted stream, the burst of eight, structured and its plain
    // twin, the conversation's two turns and tool call: one upstream call each (the refused
    // request none; the aborted stream's repeat counted apart). Chunks 20 ms apart, so the
    // abort lands mid-stream.
    let chunk_delay = Duration::from_millis(20);
    drive_through_deja(&node, &[], &dir.join("openai_sdk.mjs"), 13, chunk_delay).await;
}
