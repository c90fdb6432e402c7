//! Reading SSE bodies in tests.

use serde_json::Value;

/// `(event name, data as JSON)` for every event that has a name (Responses API style).
pub fn named_events(text: &str) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    let mut name = None;
    for line in text.lines() {
        if let Some(event) = line.strip_prefix("event: ") {
            name = Some(event.to_string());
        } else if let Some(data) = line.strip_prefix("data: ")
            && let Some(name) = name.take()
        {
            let data = serde_json::from_str(data).unwrap_or_else(|e| panic!("{e}: {data}"));
            out.push((name, data));
        }
    }
    out
}
