//! Start-up and configuration: the real binary with its environment and config file.
//! - `DEJA_*` variables that name no key (Kubernetes injects `DEJA_SERVICE_HOST`, `DEJA_PORT`...
//!   for a Service named `deja`) are ignored with one warning, not refused;
//! - a value that parses but would panic where it is used (a duration of 1e20 seconds, 3e18
//!   connections) stops start-up with exit code 2 and a message naming the key.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::fake_upstream::FakeUpstream;
use crate::support::process::{DejaProcess, PATIENCE};

/// A config file for `dir`; `sections` is appended (it may reopen `[server]` keys only
/// through its own tables, so the base leaves `[server]` last but one).
fn config(dir: &Path, upstream: &str, server: &str, upstream_extra: &str) -> PathBuf {
    let path = dir.join("proxy.toml");
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n{server}\n\n\
         [upstream]\nbase_url = \"{upstream}\"\n{upstream_extra}\n\n\
         [cache]\ndir = \"{}\"\n\n[log]\nformat = \"json\"\n",
        dir.join("cache").display()
    );
    std::fs::write(&path, text).expect("write config");
    path
}

/// Runs deja on `config` until it exits (killed after `PATIENCE`): exit code and output.
fn run_to_exit(config: &Path) -> (Option<i32>, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_deja"));
    for (key, _) in std::env::vars_os() {
        if key
            .to_string_lossy()
            .to_ascii_uppercase()
            .starts_with("DEJA_")
        {
            command.env_remove(&key);
        }
    }
    let mut child = (command.arg("--config").arg(config))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn deja");
    let deadline = Instant::now() + PATIENCE;
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let output = child.wait_with_output().expect("output");
            panic!(
                "deja kept running on an invalid config:\n{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().expect("output");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code(), text)
}

#[tokio::test(flavor = "multi_thread")]
async fn kubernetes_service_variables_do_not_stop_start_up() {
    let upstream = FakeUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    // The file points nowhere; the environment's real key must still apply.
    let path = config(dir.path(), "http://127.0.0.1:9/v1", "", "");
    let base_url = upstream.base_url();
    let deja = DejaProcess::start_with_env(
        &path,
        &[
            ("DEJA_SERVICE_HOST", "10.96.0.12"),
            ("DEJA_SERVICE_PORT", "8080"),
            ("DEJA_PORT", "tcp://10.96.0.12:8080"),
            ("DEJA_PORT_8080_TCP_ADDR", "10.96.0.12"),
            ("DEJA_UPSTREAM__BASE_URL", &base_url),
        ],
    )
    .await;
    assert_eq!(
        deja.listening["fields"]["upstream"], base_url,
        "a known DEJA_ key still overrides the file"
    );
    let output = deja.output();
    let warning = output
        .lines()
        .find(|line| line.contains("name no config key"))
        .unwrap_or_else(|| panic!("no warning about the ignored variables:\n{output}"));
    assert!(warning.contains("\"level\":\"WARN\""), "{warning}");
    for name in [
        "DEJA_SERVICE_HOST",
        "DEJA_SERVICE_PORT",
        "DEJA_PORT",
        "DEJA_PORT_8080_TCP_ADDR",
    ] {
        assert!(warning.contains(name), "{name} is named: {warning}");
    }
    assert!(
        !warning.contains("UPSTREAM"),
        "known keys are not: {warning}"
    );
    assert_eq!(
        output.matches("name no config key").count(),
        1,
        "one warning"
    );
}

#[test]
fn values_that_would_panic_stop_start_up_naming_the_key() {
    let cases = [
        ("", "idle_timeout_secs = 1e20", "upstream.idle_timeout_secs"),
        (
            "",
            "connect_timeout_secs = 1e20",
            "upstream.connect_timeout_secs",
        ),
        ("", "timeout_secs = 1e20", "upstream.timeout_secs"),
        (
            "max_connections = 3000000000000000000",
            "",
            "server.max_connections",
        ),
        (
            "header_timeout_secs = 9223372036854775807",
            "",
            "server.header_timeout_secs",
        ),
        (
            "body_timeout_secs = 9223372036854775807",
            "",
            "server.body_timeout_secs",
        ),
    ];
    for (server, upstream, key) in cases {
        let dir = tempfile::tempdir().unwrap();
        let path = config(dir.path(), "http://127.0.0.1:9/v1", server, upstream);
        let (code, output) = run_to_exit(&path);
        assert_eq!(
            code,
            Some(2),
            "{key}: a config error exits with 2:\n{output}"
        );
        assert!(output.contains(key), "{key} is named:\n{output}");
        assert!(!output.contains("panicked"), "{key}: no panic:\n{output}");
    }
}
