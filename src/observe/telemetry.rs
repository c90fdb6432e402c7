//! Structured logging. Prompts and API keys are never logged at info level: request lines
//! carry the endpoint, model, cache outcome, similarity, entry id and timings only.

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Installs the global subscriber; `RUST_LOG` overrides `log.level`. Noisy dependencies are
/// held at `warn` unless named explicitly. sled is silenced: on a full disk its flusher logs
/// an error every 200 ms, while deja reports store errors itself (once per outage).
pub fn init(config: &LogConfig) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|spec| EnvFilter::try_new(spec).ok())
        .or_else(|| EnvFilter::try_new(format!("hnsw_rs=warn,sled=off,{}", config.level)).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let result = match config.format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
    if let Err(err) = result {
        eprintln!("deja: logging already initialised: {err}");
    }
}
