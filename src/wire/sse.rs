//! An incremental Server-Sent Events parser (the subset OpenAI streams use: `event:` and
//! `data:` fields, comments, LF or CRLF line ends) and an event writer.

use std::borrow::Cow;

use bytes::Bytes;

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    pub event: Option<String>,
    pub data: String,
}

/// Feeds on arbitrary byte chunks (events may be split anywhere, even inside a UTF-8 sequence)
/// and yields complete events. Each `data` line is copied once, from the input into its
/// event; a stream's text passes through here on every relayed miss.
#[derive(Debug, Default)]
pub struct SseParser {
    /// An unfinished line (bytes after the last line end).
    partial: Vec<u8>,
    event: Option<String>,
    /// The `data` lines so far, joined with `\n`; `None` before the first.
    data: Option<String>,
}

impl SseParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds bytes and returns the events they complete.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<SseEvent> {
        let mut events = Vec::new();
        let mut rest = chunk;
        if !self.partial.is_empty() {
            let Some(end) = memchr::memchr(b'\n', rest) else {
                self.partial.extend_from_slice(rest);
                return events;
            };
            let mut line = std::mem::take(&mut self.partial);
            line.extend_from_slice(&rest[..end]);
            rest = &rest[end + 1..];
            events.extend(self.line(&line));
        }
        while let Some(end) = memchr::memchr(b'\n', rest) {
            events.extend(self.line(&rest[..end]));
            rest = &rest[end + 1..];
        }
        self.partial.extend_from_slice(rest);
        events
    }

    /// True when bytes of an unfinished line are waiting.
    pub fn has_partial(&self) -> bool {
        !self.partial.is_empty() || self.data.is_some()
    }

    fn line(&mut self, line: &[u8]) -> Option<SseEvent> {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            let Some(data) = self.data.take() else {
                self.event = None;
                return None;
            };
            return Some(SseEvent {
                event: self.event.take(),
                data,
            });
        }
        if line.starts_with(b":") {
            return None;
        }
        let (field, value) = match memchr::memchr(b':', line) {
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &[][..]),
        };
        // `from_utf8` checks ASCII a word at a time; the lossy form only when it fails.
        let value = match std::str::from_utf8(value) {
            Ok(text) => Cow::Borrowed(text),
            Err(_) => String::from_utf8_lossy(value),
        };
        match field {
            b"data" => match &mut self.data {
                Some(data) => {
                    data.push('\n');
                    data.push_str(&value);
                }
                None => self.data = Some(value.into_owned()),
            },
            b"event" => self.event = Some(value.into_owned()),
            _ => {}
        }
        None
    }
}

/// Serialises one `data:` event (JSON has no raw newlines, so one line suffices).
pub fn data_event(data: &str) -> Bytes {
    let mut out = String::with_capacity(data.len() + 8);
    for line in data.split('\n') {
        out.push_str("data: ");
        out.push_str(line);
        out.push('\n');
    }
    out.push('\n');
    Bytes::from(out)
}

/// Serialises an event with a name (the Responses API style).
pub fn named_event(event: &str, data: &str) -> Bytes {
    let mut out = format!("event: {event}\n").into_bytes();
    out.extend_from_slice(&data_event(data));
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_anywhere() {
        let stream =
            "data: {\"a\":1}\n\n: keep-alive\n\nevent: x\r\ndata: é\r\n\r\ndata: [DONE]\n\n";
        let bytes = stream.as_bytes();
        for split in 0..bytes.len() {
            let mut parser = SseParser::new();
            let mut events = parser.push(&bytes[..split]);
            events.extend(parser.push(&bytes[split..]));
            assert_eq!(
                events,
                vec![
                    SseEvent {
                        event: None,
                        data: "{\"a\":1}".into()
                    },
                    SseEvent {
                        event: Some("x".into()),
                        data: "é".into()
                    },
                    SseEvent {
                        event: None,
                        data: "[DONE]".into()
                    },
                ],
                "split at {split}"
            );
            assert!(!parser.has_partial());
        }
    }

    #[test]
    fn a_byte_at_a_time_reads_as_one_push() {
        let stream = "event: e\r\ndata: ü1\ndata:\ndata\n\n: c\ndata: [DONE]\n\n";
        let whole = SseParser::new().push(stream.as_bytes());
        let mut parser = SseParser::new();
        let mut events = Vec::new();
        for byte in stream.as_bytes() {
            events.extend(parser.push(std::slice::from_ref(byte)));
        }
        assert_eq!(events, whole);
        assert_eq!(whole.len(), 2);
        assert_eq!(whole[0].event.as_deref(), Some("e"));
        assert_eq!(whole[0].data, "ü1\n\n", "empty data lines count");
        assert!(!parser.has_partial());
    }

    #[test]
    fn multi_line_data_joins_with_newline() {
        let mut parser = SseParser::new();
        let events = parser.push(b"data: a\ndata: b\n\n");
        assert_eq!(events[0].data, "a\nb");
    }

    #[test]
    fn unfinished_event_is_partial() {
        let mut parser = SseParser::new();
        assert!(parser.push(b"data: {\"a\"").is_empty());
        assert!(parser.has_partial());
    }

    #[test]
    fn writer_round_trips() {
        let mut parser = SseParser::new();
        let mut bytes = data_event("{\"x\":1}").to_vec();
        bytes.extend_from_slice(&named_event("response.created", "{}"));
        let events = parser.push(&bytes);
        assert_eq!(events.len(), 2);
        assert_eq!(events[1].event.as_deref(), Some("response.created"));
    }
}
