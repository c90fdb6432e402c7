//! What a last user message carries besides its text. The semantic tier compares only the
//! text, so everything else about the message (`name`, unknown fields, extra fields on a text
//! part) must match exactly: it joins the scope, as the earlier turns do. Otherwise Bob asking
//! what Alice asked in a group chat would get the answer that greets Alice.

use serde_json::{Map, Value};

/// The fields of `message` other than `ignored` (fields the caller already checked, such as
/// `role` and the `content` that holds the text), and the fields of each content part other
/// than `type` and `text`. `None` when there are none, so a plain message keeps its keys.
pub fn beyond_text(message: &Value, ignored: &[&str]) -> Option<Value> {
    let Value::Object(fields) = message else {
        return None;
    };
    let mut extra: Map<String, Value> = fields
        .iter()
        .filter(|(name, _)| name.as_str() != "content" && !ignored.contains(&name.as_str()))
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect();
    if let Some(Value::Array(parts)) = fields.get("content") {
        let part_extras: Vec<Value> = parts
            .iter()
            .map(|part| match part {
                Value::Object(part) => Value::Object(
                    part.iter()
                        .filter(|(name, _)| !matches!(name.as_str(), "type" | "text"))
                        .map(|(name, value)| (name.clone(), value.clone()))
                        .collect(),
                ),
                other => other.clone(),
            })
            .collect();
        if part_extras
            .iter()
            .any(|p| p.as_object().is_none_or(|p| !p.is_empty()))
        {
            extra.insert("content".into(), Value::Array(part_extras));
        }
    }
    (!extra.is_empty()).then_some(Value::Object(extra))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_what_is_not_the_text() {
        let plain = json!({"role": "user", "content": "hi"});
        assert_eq!(beyond_text(&plain, &["role"]), None);
        let parts = json!({"role": "user", "content": [{"type": "text", "text": "hi"}]});
        assert_eq!(beyond_text(&parts, &["role"]), None);
        let named = json!({"role": "user", "name": "bob", "content": "hi"});
        assert_eq!(beyond_text(&named, &["role"]), Some(json!({"name": "bob"})));
        let tagged = json!({"role": "user", "content": [
            {"type": "text", "text": "a"},
            {"type": "text", "text": "b", "x": 1}
        ]});
        assert_eq!(
            beyond_text(&tagged, &["role"]),
            Some(json!({"content": [{}, {"x": 1}]}))
        );
        assert_eq!(beyond_text(&json!("just text"), &[]), None);
    }
}
