//! A streamed chunk read without building a `serde_json::Value` for all of it. Every chunk of
//! a chat or legacy completions stream repeats its header (id, created, model...) and mostly
//! carries a few words of delta; decoding the whole object into owned maps and strings, and
//! copying the header out of each, was most of what reading a stream cost deja. Here the
//! top-level fields stay raw JSON text borrowed from the event, and only what the assembler
//! merges is decoded.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::{MapAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// One chunk's top-level fields, in order, each as its raw JSON text.
pub struct RawChunk<'a> {
    fields: Vec<(Cow<'a, str>, &'a RawValue)>,
}

impl<'a> RawChunk<'a> {
    /// `None` unless `data` is a JSON object.
    pub fn parse(data: &'a str) -> Option<RawChunk<'a>> {
        serde_json::from_str(data).ok()
    }

    /// The raw value of `key`, unless missing or `null`. A repeated key counts as JSON
    /// parsers (and `serde_json::Value`) read it: the last one.
    pub fn get(&self, key: &str) -> Option<&'a RawValue> {
        self.fields
            .iter()
            .rev()
            .find(|(name, _)| name == key)
            .map(|(_, raw)| *raw)
            .filter(|raw| raw.get() != "null")
    }

    /// `key` decoded as `T`: `Ok(None)` when missing or `null`, an error when it does not fit.
    pub fn decode<T: Deserialize<'a>>(&self, key: &str) -> Result<Option<T>, serde_json::Error> {
        self.get(key)
            .map(|raw| serde_json::from_str(raw.get()))
            .transpose()
    }
}

impl<'de> Deserialize<'de> for RawChunk<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Fields;
        impl<'de> Visitor<'de> for Fields {
            type Value = RawChunk<'de>;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<RawChunk<'de>, M::Error> {
                let mut fields = Vec::with_capacity(8);
                while let Some((Key(name), raw)) = map.next_entry::<Key, &'de RawValue>()? {
                    fields.push((name, raw));
                }
                Ok(RawChunk { fields })
            }
        }
        deserializer.deserialize_map(Fields)
    }
}

/// A field name, borrowed from the text unless it had escapes (serde's own `Cow<str>`
/// always copies).
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Name;
        impl<'de> Visitor<'de> for Name {
            type Value = Key<'de>;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a field name")
            }

            fn visit_borrowed_str<E>(self, name: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(name)))
            }

            fn visit_str<E>(self, name: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(name.to_string())))
            }
        }
        deserializer.deserialize_str(Name)
    }
}

/// The header fields a chunk stream repeats, kept as raw JSON text: a chunk whose field reads
/// as before costs a comparison, not a copy. A non-null value replaces the one held.
#[derive(Debug, Default)]
pub struct RawHeader {
    fields: Vec<(&'static str, Box<RawValue>)>,
}

impl RawHeader {
    /// Takes the non-null `keys` of `chunk`.
    pub fn update(&mut self, chunk: &RawChunk, keys: &[&'static str]) {
        for key in keys {
            let Some(raw) = chunk.get(key) else { continue };
            match self.fields.iter_mut().find(|(name, _)| name == key) {
                Some((_, held)) if held.get() == raw.get() => {}
                Some((_, held)) => *held = raw.to_owned(),
                None => self.fields.push((key, raw.to_owned())),
            }
        }
    }

    /// The fields as a JSON object, the start of the assembled answer.
    pub fn into_map(self) -> Map<String, Value> {
        self.fields
            .into_iter()
            .filter_map(|(key, raw)| Some((key.to_string(), serde_json::from_str(raw.get()).ok()?)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fields_stay_raw_and_nulls_count_as_missing() {
        let chunk = RawChunk::parse(r#"{"id":"c\"1","usage":null,"n":[1, 2],"id":"c2"}"#)
            .expect("an object");
        assert_eq!(chunk.get("id").map(RawValue::get), Some(r#""c2""#));
        assert!(chunk.get("usage").is_none());
        assert!(chunk.get("missing").is_none());
        assert_eq!(chunk.get("n").map(RawValue::get), Some("[1, 2]"));
        let numbers: Vec<u8> = chunk.decode("n").expect("fits").expect("present");
        assert_eq!(numbers, [1, 2]);
        assert!(chunk.decode::<String>("n").is_err());
    }

    #[test]
    fn whitespace_around_a_null_does_not_make_it_a_value() {
        let chunk = RawChunk::parse("{ \"usage\" :\n null , \"id\":\t\"x\" }").expect("object");
        assert!(chunk.get("usage").is_none());
        assert_eq!(chunk.get("id").map(RawValue::get), Some(r#""x""#));
    }

    #[test]
    fn escaped_keys_are_read_as_their_text() {
        let chunk = RawChunk::parse(r#"{"\u0069d":"x"}"#).expect("an object");
        assert_eq!(chunk.get("id").map(RawValue::get), Some(r#""x""#));
    }

    #[test]
    fn only_objects_parse() {
        for bad in ["[1]", "\"s\"", "{not json", "", "{\"a\":1} trailing"] {
            assert!(RawChunk::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn the_header_keeps_the_latest_non_null_values() {
        let mut header = RawHeader::default();
        let keys = &["id", "model", "system_fingerprint"];
        let first = RawChunk::parse(r#"{"id":"a","model":"m","system_fingerprint":null}"#);
        header.update(&first.expect("object"), keys);
        let second = RawChunk::parse(r#"{"id":"a","model":"m2","system_fingerprint":"fp"}"#);
        header.update(&second.expect("object"), keys);
        let third = RawChunk::parse(r#"{"id":"a","model":null,"other":1}"#);
        header.update(&third.expect("object"), keys);
        assert_eq!(
            Value::Object(header.into_map()),
            json!({"id": "a", "model": "m2", "system_fingerprint": "fp"})
        );
    }
}
