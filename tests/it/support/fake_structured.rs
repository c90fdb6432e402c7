//! The fake upstream's Structured Outputs. Declared as a private child module of
//! `fake_upstream.rs`. With `response_format` `{"type": "json_schema", ...}` the API answers
//! with message content that is JSON text matching the schema (`refusal` null); with
//! `{"type": "json_object"}`, some JSON object. The fake fills a schema's properties from the
//! answer it would have given: strings with its text, numbers with its word count.

use serde_json::{Map, Value, json};

/// The content the API would give instead of `text` for this `response_format`, if it asks for
/// JSON.
pub(super) fn structured_content(response_format: &Value, text: &str) -> Option<String> {
    match response_format["type"].as_str()? {
        "json_schema" => {
            let schema = &response_format["json_schema"]["schema"];
            Some(fill(schema, schema, text, 0).to_string())
        }
        "json_object" => Some(json!({ "answer": text }).to_string()),
        _ => None,
    }
}

/// A value of `schema`'s shape; `root` resolves `$ref`s (Pydantic puts nested models under
/// `$defs`). Deep or circular schemas end in null.
fn fill(schema: &Value, root: &Value, text: &str, depth: usize) -> Value {
    if depth > 8 {
        return Value::Null;
    }
    if let Some(target) = schema["$ref"].as_str() {
        let resolved = target
            .strip_prefix('#')
            .and_then(|pointer| root.pointer(pointer))
            .unwrap_or(&Value::Null);
        return fill(resolved, root, text, depth + 1);
    }
    if let Some(first) = schema["enum"].as_array().and_then(|values| values.first()) {
        return first.clone();
    }
    if let Some(constant) = schema.get("const") {
        return constant.clone();
    }
    for key in ["anyOf", "oneOf"] {
        if let Some(options) = schema[key].as_array() {
            let option = options
                .iter()
                .find(|option| option["type"] != "null")
                .or(options.first());
            return option.map_or(Value::Null, |o| fill(o, root, text, depth + 1));
        }
    }
    // `"type": ["string", "null"]` is a nullable string.
    let kind = match &schema["type"] {
        Value::Array(kinds) => kinds.iter().find(|k| *k != "null").cloned(),
        kind => Some(kind.clone()),
    };
    let words = text.split_whitespace().count();
    match kind.as_ref().and_then(Value::as_str) {
        Some("object") => {
            let mut object = Map::new();
            if let Some(properties) = schema["properties"].as_object() {
                for (name, property) in properties {
                    object.insert(name.clone(), fill(property, root, text, depth + 1));
                }
            }
            Value::Object(object)
        }
        Some("array") => json!([fill(&schema["items"], root, text, depth + 1)]),
        Some("string") => json!(text),
        Some("integer") => json!(words),
        Some("number") => json!(words as f64 + 0.5),
        Some("boolean") => json!(words.is_multiple_of(2)),
        _ => Value::Null,
    }
}
