//! The API a request called, as the usage log, the metrics, the log lines and the dashboard
//! name it. An enum, so a misspelt name cannot open a metrics series of its own.

use std::fmt;

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum EndpointName {
    #[serde(rename = "chat.completions")]
    ChatCompletions,
    #[serde(rename = "completions")]
    Completions,
    #[serde(rename = "responses")]
    Responses,
    #[serde(rename = "embeddings")]
    Embeddings,
    /// Any other `/v1/*` call, relayed uncached.
    #[serde(rename = "relay")]
    Relay,
}

impl EndpointName {
    pub const ALL: [EndpointName; 5] = [
        EndpointName::ChatCompletions,
        EndpointName::Completions,
        EndpointName::Responses,
        EndpointName::Embeddings,
        EndpointName::Relay,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EndpointName::ChatCompletions => "chat.completions",
            EndpointName::Completions => "completions",
            EndpointName::Responses => "responses",
            EndpointName::Embeddings => "embeddings",
            EndpointName::Relay => "relay",
        }
    }
}

impl fmt::Display for EndpointName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serialises_as_its_name() {
        for name in EndpointName::ALL {
            assert_eq!(
                serde_json::to_value(name).unwrap(),
                serde_json::Value::from(name.as_str())
            );
        }
    }
}
