//! `[log]`: the tracing subscriber, installed once at start-up.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A tracing filter such as `info` or `deja=debug,info`; `RUST_LOG` wins when set.
    pub level: String,
    /// `text` for humans, `json` for log pipelines.
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

impl LogConfig {
    pub(super) fn keep_start_up(&self, next: &mut Self, changed: &mut Vec<&'static str>) {
        keep!(self, next, changed, "log");
    }
}
