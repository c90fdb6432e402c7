//! Why a managed key's request was refused (`Refusal`), and the duration text OpenAI uses in
//! its rate-limit messages and headers. The limits themselves live in `crate::managed::limits`
//! (and `crate::replica::limits`); an error carries a refusal to the client.

/// Why a request was refused, and when to retry.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    Requests {
        limit: u64,
        retry_ms: u64,
    },
    Tokens {
        limit: u64,
        requested: u64,
        retry_ms: u64,
    },
    Budget {
        budget_usd: f64,
        retry_ms: u64,
    },
}

impl Refusal {
    pub fn retry_ms(&self) -> u64 {
        match self {
            Refusal::Requests { retry_ms, .. }
            | Refusal::Tokens { retry_ms, .. }
            | Refusal::Budget { retry_ms, .. } => *retry_ms,
        }
    }

    /// The label used in metrics and the usage log.
    pub fn limit_name(&self) -> &'static str {
        match self {
            Refusal::Requests { .. } => "requests",
            Refusal::Tokens { .. } => "tokens",
            Refusal::Budget { .. } => "budget",
        }
    }
}

/// A duration as OpenAI writes it: `120ms`, `6s`, `1.5s`, `6m0s`.
pub fn duration_text(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        let secs = ms as f64 / 1000.0;
        let text = format!("{secs:.3}");
        format!("{}s", text.trim_end_matches('0').trim_end_matches('.'))
    } else {
        format!("{}m{}s", ms / 60_000, (ms % 60_000).div_ceil(1000))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_openai() {
        assert_eq!(duration_text(120), "120ms");
        assert_eq!(duration_text(6000), "6s");
        assert_eq!(duration_text(1500), "1.5s");
        assert_eq!(duration_text(360_000), "6m0s");
    }
}
