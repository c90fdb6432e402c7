//! Finding and replacing one top-level field of a JSON object in its text, without parsing the
//! rest. A cache hit only needs a fresh `id` in an answer that is otherwise served as stored;
//! parsing, cloning and re-serialising the whole answer for that was the largest cost of a hit
//! (callgrind, benches/proxy_load.rs --profile).

use std::ops::Range;

use serde_json::Value;

/// The byte range of the value of `key` at the top level of the JSON object `text`. `None`
/// when `text` is not a well-formed object (as far as the scan needs) or has no such key.
pub fn top_level_value(text: &str, key: &str) -> Option<Range<usize>> {
    let bytes = text.as_bytes();
    let mut i = skip_ws(bytes, 0);
    if bytes.get(i) != Some(&b'{') {
        return None;
    }
    i += 1;
    loop {
        i = skip_ws(bytes, i);
        match bytes.get(i)? {
            b'}' => return None,
            b'"' => {}
            _ => return None,
        }
        let key_end = skip_string(bytes, i)?;
        let name = &bytes[i + 1..key_end - 1];
        i = skip_ws(bytes, key_end);
        if bytes.get(i) != Some(&b':') {
            return None;
        }
        let start = skip_ws(bytes, i + 1);
        let end = skip_value(bytes, start)?;
        if name == key.as_bytes() {
            return Some(start..end);
        }
        i = skip_ws(bytes, end);
        match bytes.get(i)? {
            b',' => i += 1,
            _ => return None,
        }
    }
}

/// `text` with the top-level `key`'s value replaced by `value_json` (already JSON); `None`
/// when the key is absent.
pub fn replace_top_level(text: &str, key: &str, value_json: &str) -> Option<String> {
    let range = top_level_value(text, key)?;
    let mut out = String::with_capacity(text.len() + value_json.len());
    out.push_str(&text[..range.start]);
    out.push_str(value_json);
    out.push_str(&text[range.end..]);
    Some(out)
}

/// `value` as JSON text with `keys` (those present) first, in that order, then the rest.
/// Answers are stored this way with `id` and `usage` leading, so a hit finds both without
/// scanning past the answer's content.
pub fn with_keys_first(value: &Value, keys: &[&str]) -> String {
    let Some(object) = value.as_object() else {
        return value.to_string();
    };
    let mut out = String::with_capacity(256);
    out.push('{');
    let mut first = true;
    let mut push = |out: &mut String, key: &str, value: &Value| {
        if !std::mem::take(&mut first) {
            out.push(',');
        }
        out.push_str(&Value::String(key.to_string()).to_string());
        out.push(':');
        out.push_str(&value.to_string());
    };
    for key in keys {
        if let Some(value) = object.get(*key) {
            push(&mut out, key, value);
        }
    }
    for (key, value) in object {
        if !keys.contains(&key.as_str()) {
            push(&mut out, key, value);
        }
    }
    out.push('}');
    out
}

fn skip_ws(bytes: &[u8], mut i: usize) -> usize {
    while matches!(bytes.get(i), Some(b' ' | b'\n' | b'\r' | b'\t')) {
        i += 1;
    }
    i
}

/// `bytes[i]` is an opening quote; returns the index after the closing one.
fn skip_string(bytes: &[u8], mut i: usize) -> Option<usize> {
    i += 1;
    loop {
        match bytes.get(i)? {
            b'\\' => i += 2,
            b'"' => return Some(i + 1),
            _ => i += 1,
        }
    }
}

/// Returns the index after the value starting at `i`.
fn skip_value(bytes: &[u8], i: usize) -> Option<usize> {
    match bytes.get(i)? {
        b'"' => skip_string(bytes, i),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut j = i;
            loop {
                match bytes.get(j)? {
                    b'"' => {
                        j = skip_string(bytes, j)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
        }
        _ => {
            let len = bytes[i..]
                .iter()
                .position(|b| matches!(b, b',' | b'}' | b']' | b' ' | b'\n' | b'\r' | b'\t'))?;
            (len > 0).then_some(i + len)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn finds_only_top_level_keys() {
        let text = r#"{"choices":[{"id":"inner","message":{"content":"a \"quoted\" }{ id"}}],"id":"chatcmpl-1","usage":{"prompt_tokens":3},"n":-1.5e3,"x":null}"#;
        assert_eq!(
            &text[top_level_value(text, "id").unwrap()],
            "\"chatcmpl-1\""
        );
        assert_eq!(
            &text[top_level_value(text, "usage").unwrap()],
            r#"{"prompt_tokens":3}"#
        );
        assert_eq!(&text[top_level_value(text, "n").unwrap()], "-1.5e3");
        assert_eq!(&text[top_level_value(text, "x").unwrap()], "null");
        assert!(top_level_value(text, "message").is_none());
        assert!(top_level_value(text, "content").is_none());
    }

    #[test]
    fn replacing_equals_editing_the_parsed_value() {
        let stored = json!({
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "id: \"x\" \\ {"}}],
            "created": 1,
            "id": "chatcmpl-old",
            "model": "gpt-4o-mini",
            "usage": {"prompt_tokens": 1, "completion_tokens": 2},
        });
        for text in [
            stored.to_string(),
            serde_json::to_string_pretty(&stored).unwrap(),
        ] {
            let replaced = replace_top_level(&text, "id", "\"chatcmpl-new\"").unwrap();
            let mut expected = stored.clone();
            expected["id"] = json!("chatcmpl-new");
            assert_eq!(serde_json::from_str::<Value>(&replaced).unwrap(), expected);
        }
    }

    #[test]
    fn leading_keys_keep_the_value() {
        let value = json!({"b": 1, "usage": {"x": [1, "a\"b"]}, "id": "i\u{e9}", "a": null});
        let text = with_keys_first(&value, &["id", "usage", "missing"]);
        assert!(text.starts_with(r#"{"id":"ié","usage":"#), "{text}");
        assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), value);
        assert_eq!(&text[top_level_value(&text, "id").unwrap()], "\"ié\"");
        assert_eq!(with_keys_first(&json!([1]), &["id"]), "[1]");
        assert_eq!(with_keys_first(&json!({}), &["id"]), "{}");
    }

    #[test]
    fn malformed_or_missing_gives_none() {
        for text in [
            "",
            "[]",
            "{",
            r#"{"id" "x"}"#,
            r#"{"a":1 "id":2}"#,
            r#"{"a":"#,
            "{}",
        ] {
            assert!(replace_top_level(text, "id", "1").is_none(), "{text}");
        }
    }
}
