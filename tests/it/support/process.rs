//! The real `deja` binary as a child process: spawned with a config file, its JSON log lines
//! readable as they come, killed (SIGKILL) on drop so none outlives a failed assertion.
//! (tests/it/restart.rs has its own copy, with graceful-stop helpers.)

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde_json::Value;
use tokio::sync::mpsc;

/// How long to wait for a log line (start-up includes opening the store) or for an exit.
pub const PATIENCE: Duration = Duration::from_secs(20);

pub struct DejaProcess {
    pub child: Child,
    logs: mpsc::UnboundedReceiver<Value>,
    output: Arc<Mutex<String>>,
    /// From the "deja listening" line.
    pub addr: SocketAddr,
    pub listening: Value,
}

impl DejaProcess {
    /// Spawns the binary (hermetic: no `DEJA_*`, `RUST_LOG` or proxy variables from the
    /// environment) and waits until it listens.
    pub async fn start(config: &Path) -> DejaProcess {
        Self::start_with_env(config, &[]).await
    }

    /// `start`, with `env` set for the child.
    pub async fn start_with_env(config: &Path, env: &[(&str, &str)]) -> DejaProcess {
        let mut command = Command::new(env!("CARGO_BIN_EXE_deja"));
        for (key, _) in std::env::vars_os() {
            let upper = key.to_string_lossy().to_ascii_uppercase();
            if upper.starts_with("DEJA_") || upper == "RUST_LOG" || upper.ends_with("_PROXY") {
                command.env_remove(&key);
            }
        }
        command.envs(env.iter().copied());
        let mut child = (command.arg("--config").arg(config))
            .env("NO_PROXY", "127.0.0.1,localhost")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn deja");
        let output = Arc::new(Mutex::new(String::new()));
        let (tx, logs) = mpsc::unbounded_channel();
        // Detached: the readers end with the process's pipes.
        drain(child.stdout.take().unwrap(), "", output.clone(), tx.clone());
        drain(child.stderr.take().unwrap(), "stderr: ", output.clone(), tx);
        let mut deja = DejaProcess {
            child,
            logs,
            output,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            listening: Value::Null,
        };
        deja.listening = deja.wait_for_log("deja listening").await;
        let addr = deja.listening["fields"]["addr"].as_str().expect("addr");
        deja.addr = addr.parse().expect("addr is host:port");
        deja
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The next log line whose message is `message` (earlier lines are skipped).
    pub async fn wait_for_log(&mut self, message: &str) -> Value {
        let found = tokio::time::timeout(PATIENCE, async {
            while let Some(line) = self.logs.recv().await {
                if line["fields"]["message"] == message {
                    return Some(line);
                }
            }
            None
        });
        match found.await {
            Ok(Some(line)) => line,
            _ => panic!("no {message:?} log line from deja"),
        }
    }

    /// SIGKILL, then waits (without blocking the runtime) until the process is gone.
    pub async fn crash(&mut self) {
        self.child.kill().expect("SIGKILL deja");
        let deadline = Instant::now() + PATIENCE;
        while self.child.try_wait().expect("try_wait").is_none() {
            assert!(Instant::now() < deadline, "deja did not exit");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Everything printed so far.
    pub fn output(&self) -> String {
        self.output.lock().clone()
    }
}

impl Drop for DejaProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- deja output ---\n{}", self.output.lock());
        }
    }
}

/// Copies a pipe into `output` line by line until EOF (deja never blocks on a full pipe);
/// JSON lines also go to `logs`.
pub fn drain(
    pipe: impl Read + Send + 'static,
    prefix: &'static str,
    output: Arc<Mutex<String>>,
    logs: mpsc::UnboundedSender<Value>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            output.lock().push_str(&format!("{prefix}{line}\n"));
            if let Ok(json) = serde_json::from_str::<Value>(&line) {
                let _ = logs.send(json);
            }
        }
    })
}

/// Writes `dir/proxy.toml` (JSON logs at `level`, store in `dir/cache`); `extra` lines go into
/// its `[cache]` section.
pub fn write_config(dir: &Path, upstream: &str, level: &str, extra: &str) -> PathBuf {
    let path = dir.join("proxy.toml");
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n\n[upstream]\nbase_url = \"{upstream}\"\n\n\
         [cache]\ndir = \"{}\"\nsimilarity_threshold = 0.9\n{extra}\n\n\
         [log]\nformat = \"json\"\nlevel = \"{level}\"\n",
        dir.join("cache").display()
    );
    std::fs::write(&path, text).expect("write config");
    path
}
