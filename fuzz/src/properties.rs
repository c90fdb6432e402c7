//! What must hold for any input. Each function panics when a property fails; the fuzz targets
//! feed them libFuzzer's inputs and `tests/it/fuzz_regressions.rs` replays saved ones on stable.

use deja::cache::Partition;
use deja::cache::key::Hash32;
use deja::endpoints::chat::ChatCompletions;
use deja::endpoints::completions::Completions;
use deja::endpoints::responses::{RESPONSES, RESPONSES_CACHING_STORED};
use deja::flow::{Endpoint, Plan};
use deja::wire::sse::{SseParser, data_event, named_event};
use serde_json::Value;

/// What a plan decides, in comparable form.
type Keys = Option<(Hash32, Hash32, Option<String>, String, bool, bool)>;

fn keys(plan: Plan) -> Keys {
    match plan {
        Plan::Cache(l) => Some((
            l.scope,
            l.exact,
            l.semantic_text,
            l.model,
            l.stream,
            l.include_usage,
        )),
        Plan::Bypass { .. } => None,
    }
}

fn partition(tenant: &str) -> Partition {
    Partition {
        tenant: tenant.into(),
        namespace: String::new(),
    }
}

/// Request planning (chat, completions, responses) on any JSON body: never panics, the same
/// body always gives the same keys, the same body written with other key order and whitespace
/// gives the same keys, and another tenant never shares a scope.
pub fn request_keys(data: &[u8]) {
    let Ok(body) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let rewritten = rewrite(&body);
    let reparsed: Value = serde_json::from_str(&rewritten)
        .unwrap_or_else(|e| panic!("rewritten body does not parse ({e}): {rewritten}"));
    let endpoints: [&'static dyn Endpoint; 4] = [
        &ChatCompletions,
        &Completions,
        &RESPONSES,
        &RESPONSES_CACHING_STORED,
    ];
    for endpoint in endpoints {
        let first = keys(endpoint.plan(body.clone(), &partition("a")));
        let again = keys(endpoint.plan(body.clone(), &partition("a")));
        assert_eq!(first, again, "{}: keys not deterministic", endpoint.name());
        let other = keys(endpoint.plan(reparsed.clone(), &partition("a")));
        assert_eq!(
            first,
            other,
            "{}: key order or whitespace changed the key: {rewritten}",
            endpoint.name()
        );
        if let Some(first) = first {
            let tenant_b = keys(endpoint.plan(body.clone(), &partition("b")));
            let tenant_b = tenant_b.expect("the plan does not depend on the tenant");
            assert_ne!(
                first.0,
                tenant_b.0,
                "{}: tenants share a scope",
                endpoint.name()
            );
            assert_ne!(
                first.1,
                tenant_b.1,
                "{}: tenants share an exact key",
                endpoint.name()
            );
        }
    }
}

/// `value` as JSON text with object keys in reverse order and whitespace between all tokens.
fn rewrite(value: &Value) -> String {
    match value {
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(rewrite).collect();
            format!("[ {} ]", items.join(" ,\n "))
        }
        Value::Object(map) => {
            let fields: Vec<String> = map
                .iter()
                .rev()
                .map(|(k, v)| format!("{} :\t{}", serde_json::to_string(k).unwrap(), rewrite(v)))
                .collect();
            format!("{{\n {} \n}}", fields.join(" ,\r\n "))
        }
        scalar => serde_json::to_string(scalar).unwrap(),
    }
}

/// The SSE parser on any bytes: never panics, gives the same events and the same partial state
/// however the bytes are split, and what the writer writes reads back unchanged.
pub fn sse_parser(data: &[u8]) {
    let Some((&seed, stream)) = data.split_first() else {
        return;
    };
    let mut whole = SseParser::new();
    let expected = whole.push(stream);
    for step in [1, usize::from(seed % 16) + 2] {
        let mut parser = SseParser::new();
        let mut events = Vec::new();
        for chunk in stream.chunks(step) {
            events.extend(parser.push(chunk));
        }
        assert_eq!(events, expected, "split every {step} bytes");
        assert_eq!(
            parser.has_partial(),
            whole.has_partial(),
            "split every {step} bytes"
        );
    }

    // The writer: any text without CR (JSON never has a raw one) reads back as one event.
    let text = String::from_utf8_lossy(stream).replace('\r', "");
    let mut parser = SseParser::new();
    let events = parser.push(&data_event(&text));
    assert_eq!(events.len(), 1, "{text:?}");
    assert_eq!(events[0].data, text);
    assert_eq!(events[0].event, None);
    assert!(!parser.has_partial());
    let name = text.lines().next().unwrap_or_default();
    let events = parser.push(&named_event(name, &text));
    assert_eq!(events.len(), 1, "{name:?} {text:?}");
    assert_eq!(events[0].event.as_deref(), Some(name));
    assert_eq!(events[0].data, text);
}
