// Production code answers errors, it never panics on them (tests may unwrap freely).
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::todo,
        clippy::unimplemented
    )
)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use deja::clock::SystemClock;
use deja::config::Config;

/// A drop-in caching proxy for OpenAI-compatible APIs. Without a command, it serves.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Configuration file; `DEJA_*` environment variables override its keys.
    #[arg(long, default_value = "proxy.toml", global = true)]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Measure deja's own code on recorded data (see `deja bench quality --help`).
    Bench {
        #[command(subcommand)]
        bench: deja::bench::BenchCommand,
    },
    /// Print the `[[keys]].hash` of a key read from standard input (kept out of shell history).
    HashKey,
    /// What other similarity thresholds would do, from a running deja's recent lookups.
    Replay(deja::ops::dashboard::cli::ReplayArgs),
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(Command::HashKey) = args.command {
        let mut key = String::new();
        if std::io::stdin().read_line(&mut key).is_err() || key.trim().is_empty() {
            eprintln!("deja hash-key: give the key on standard input");
            return ExitCode::from(2);
        }
        println!("{}", deja::managed::keys::hash_key(key.trim()));
        return ExitCode::SUCCESS;
    }
    if let Some(Command::Replay(replay)) = args.command {
        let config = match Config::load(&args.config) {
            Ok(config) => config,
            Err(err) => {
                eprintln!("deja replay: {err}");
                return ExitCode::from(2);
            }
        };
        return match deja::ops::dashboard::cli::run(replay, &config).await {
            Ok(table) => {
                print!("{table}");
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("deja replay: {err}");
                ExitCode::FAILURE
            }
        };
    }
    if let Some(Command::Bench { bench }) = args.command {
        return match deja::bench::run(bench, &args.config).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("deja bench: {err}");
                ExitCode::FAILURE
            }
        };
    }
    let config = match Config::load(&args.config) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("deja: {err}");
            return ExitCode::from(2);
        }
    };
    deja::observe::telemetry::init(&config.log);
    if !config.ignored_env.is_empty() {
        tracing::warn!(
            variables = ?config.ignored_env,
            "ignoring DEJA_* environment variables that name no config key"
        );
    }
    let server = match deja::server::start(config, Arc::new(SystemClock)).await {
        Ok(server) => server,
        Err(err) => {
            tracing::error!(error = %err, "could not start");
            return ExitCode::FAILURE;
        }
    };
    reload_on_sighup(server.app.clone());
    if server.run_until(shutdown_signal()).await {
        ExitCode::SUCCESS
    } else {
        tracing::error!("the listener stopped; exiting");
        ExitCode::FAILURE
    }
}

/// SIGHUP re-reads the configuration file, as `POST /admin/reload` does.
fn reload_on_sighup(app: Arc<deja::app::App>) {
    #[cfg(unix)]
    tokio::spawn(async move {
        let Ok(mut hangups) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            return;
        };
        while hangups.recv().await.is_some() {
            let app = app.clone();
            let result =
                tokio::task::spawn_blocking(move || deja::ops::admin::reload::reload(&app)).await;
            if let Ok(Err(err)) = result {
                tracing::error!(error = %err, "reload failed; configuration unchanged");
            }
        }
    });
    #[cfg(not(unix))]
    let _ = app;
}

/// Ctrl-C or SIGTERM (what `docker stop` and Kubernetes send).
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
