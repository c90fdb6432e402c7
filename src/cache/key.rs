//! Cache keys: canonical JSON and NUL-separated blake3 hashing.
//!
//! A *scope* is everything that shapes an answer except the last user message (tenant,
//! namespace, endpoint, model, earlier turns, tools, sampling...). The *exact key* is the scope
//! plus that last message. Semantic search only ever compares prompts within one scope.

use std::fmt;

use serde_json::{Number, Value};

/// A 32-byte blake3 digest used as a key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Hash32(pub [u8; 32]);

impl Hash32 {
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub fn from_slice(bytes: &[u8]) -> Option<Hash32> {
        bytes.try_into().ok().map(Hash32)
    }

    /// Short hex form for logs (never reversible to the prompt).
    pub fn short(&self) -> String {
        self.0[..6].iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl fmt::Debug for Hash32 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash32({})", self.short())
    }
}

/// Builds a hash from labelled parts; each part is followed by a NUL so that
/// ("ab","c") and ("a","bc") never collide. The parts are gathered in a buffer and hashed
/// once: blake3's per-call overhead on dozens of tiny updates cost more than the hashing
/// (callgrind). The bytes hashed, and so every key, are the same as with streaming updates.
pub struct KeyBuilder(Vec<u8>);

impl KeyBuilder {
    pub fn new(domain: &str) -> Self {
        let mut builder = KeyBuilder(Vec::with_capacity(512));
        builder.part("deja-key-v1").part(domain);
        builder
    }

    pub fn part(&mut self, text: &str) -> &mut Self {
        self.0.extend_from_slice(text.as_bytes());
        self.0.extend_from_slice(&[0]);
        self
    }

    pub fn bytes(&mut self, bytes: &[u8]) -> &mut Self {
        self.0
            .extend_from_slice(&(bytes.len() as u64).to_be_bytes());
        self.0.extend_from_slice(bytes);
        self
    }

    /// Adds a JSON value in canonical form (sorted keys, normalised numbers), streamed into
    /// the hash without building a copy or a string (this runs on every request).
    pub fn json(&mut self, label: &str, value: &Value) -> &mut Self {
        self.part(label);
        hash_canonical(&mut self.0, value);
        self.0.extend_from_slice(&[0]);
        self
    }

    /// Adds an optional JSON field; absent and `null` are the same request to OpenAI.
    pub fn opt_json(&mut self, label: &str, value: &Option<Value>) -> &mut Self {
        match value {
            None | Some(Value::Null) => self.part(label).part("\u{1}absent"),
            Some(value) => self.json(label, value),
        }
    }

    pub fn finish(&self) -> Hash32 {
        Hash32(*blake3::hash(&self.0).as_bytes())
    }
}

/// Completes a request's scope with its unknown fields (unknown means "may shape the
/// answer") and returns the scope and the exact key (the scope plus the last message).
pub fn scope_and_exact(
    mut scope: KeyBuilder,
    other: &std::collections::BTreeMap<String, Value>,
    last: &Value,
) -> (Hash32, Hash32) {
    for (name, value) in other {
        scope.json(name, value);
    }
    let scope = scope.finish();
    let exact = KeyBuilder::new("exact")
        .bytes(scope.as_bytes())
        .json("last", last)
        .finish();
    (scope, exact)
}

/// Feeds `value` into `hasher` as a self-delimiting, type-tagged encoding: object keys in
/// sorted order, integral floats as integers, strings length-prefixed.
fn hash_canonical(hasher: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Null => {
            hasher.extend_from_slice(b"n");
        }
        Value::Bool(b) => {
            hasher.extend_from_slice(if *b { b"t" } else { b"f" });
        }
        Value::Number(number) => {
            let text = canonical_number(number).to_string();
            hasher.extend_from_slice(b"#");
            hash_str(hasher, &text);
        }
        Value::String(text) => {
            hasher.extend_from_slice(b"s");
            hash_str(hasher, text);
        }
        Value::Array(items) => {
            hasher.extend_from_slice(b"[");
            hasher.extend_from_slice(&(items.len() as u64).to_be_bytes());
            for item in items {
                hash_canonical(hasher, item);
            }
        }
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
            hasher.extend_from_slice(b"{");
            hasher.extend_from_slice(&(entries.len() as u64).to_be_bytes());
            for (key, value) in entries {
                hash_str(hasher, key);
                hash_canonical(hasher, value);
            }
        }
    }
}

fn hash_str(hasher: &mut Vec<u8>, text: &str) {
    hasher.extend_from_slice(&(text.len() as u64).to_be_bytes());
    hasher.extend_from_slice(text.as_bytes());
}

/// `1.0` and `1` are the same number to OpenAI.
fn canonical_number(number: &Number) -> Number {
    match number.as_f64() {
        Some(f) if number.is_f64() && f.fract() == 0.0 && f.abs() < 9.0e15 => {
            Number::from(f as i64)
        }
        _ => number.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn hash_of(value: &Value) -> Hash32 {
        KeyBuilder::new("test").json("v", value).finish()
    }

    #[test]
    fn key_order_and_number_form_do_not_matter() {
        assert_eq!(
            hash_of(&json!({"b": 1.0, "a": [2, {"y": 0.5, "x": 1}]})),
            hash_of(&json!({"a": [2, {"x": 1.0, "y": 0.5}], "b": 1}))
        );
    }

    #[test]
    fn values_matter() {
        assert_ne!(hash_of(&json!({"t": 0.7})), hash_of(&json!({"t": 0.8})));
        assert_ne!(hash_of(&json!(["a", "b"])), hash_of(&json!(["b", "a"])));
    }

    #[test]
    fn types_and_boundaries_are_distinguished() {
        assert_ne!(hash_of(&json!("1")), hash_of(&json!(1)));
        assert_ne!(hash_of(&json!(["ab"])), hash_of(&json!(["a", "b"])));
        assert_ne!(hash_of(&json!({"a": "b"})), hash_of(&json!({"ab": ""})));
        assert_ne!(hash_of(&json!(null)), hash_of(&json!("n")));
        assert_ne!(hash_of(&json!([[]])), hash_of(&json!([])));
    }

    #[test]
    fn keys_are_stable_across_versions() {
        // A store written by an earlier build must keep finding its entries.
        let key = KeyBuilder::new("exact")
            .part("p")
            .json("v", &json!({"b": [1, 2.0, "x"], "a": null}))
            .finish();
        let mut streamed = blake3::Hasher::new();
        for piece in [
            &b"deja-key-v1\0exact\0p\0v\0{"[..],
            &2u64.to_be_bytes(),
            &1u64.to_be_bytes(),
            b"a",
            b"n",
            &1u64.to_be_bytes(),
            b"b",
            b"[",
            &3u64.to_be_bytes(),
            b"#",
            &1u64.to_be_bytes(),
            b"1",
            b"#",
            &1u64.to_be_bytes(),
            b"2",
            b"s",
            &1u64.to_be_bytes(),
            b"x",
            b"\0",
        ] {
            streamed.update(piece);
        }
        assert_eq!(key.0, *streamed.finalize().as_bytes());
    }

    #[test]
    fn parts_are_separated() {
        let a = KeyBuilder::new("d").part("ab").part("c").finish();
        let b = KeyBuilder::new("d").part("a").part("bc").finish();
        assert_ne!(a, b);
    }

    #[test]
    fn absent_equals_null_but_not_a_value() {
        let absent = KeyBuilder::new("d").opt_json("x", &None).finish();
        let null = KeyBuilder::new("d")
            .opt_json("x", &Some(Value::Null))
            .finish();
        let zero = KeyBuilder::new("d").opt_json("x", &Some(json!(0))).finish();
        assert_eq!(absent, null);
        assert_ne!(absent, zero);
    }
}
