//! A streamed hit, rendered as the client reads it.
//!
//! A replay is a short list of steps: as many as the answer has fields, items and parts, not
//! one per piece of text. Each step renders its event from the stored answer only when the
//! body is polled, and hyper polls the body only as the client drains it. So a client that
//! stops reading holds the stored answer and one event, not the whole replay, which is several
//! times the answer (every piece of text becomes an event repeating the header fields).
//! Replays of the same long answer running at the same time share one parsed copy of it
//! (`parse_shared`), so many clients stalled on one popular answer hold it once.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, LazyLock, Weak};

use bytes::Bytes;
use parking_lot::Mutex;
use serde_json::Value;

use crate::replay::text::piece_end;

/// The events of a replay, each rendered when it is asked for.
pub type Replay = Box<dyn Iterator<Item = Bytes> + Send>;

type Render<C> = Box<dyn FnOnce(&Value, &mut C) -> Bytes + Send>;
/// Renders the event of one piece of text; the `usize` is the piece's position (0 first).
type RenderPiece<C> = Box<dyn FnMut(&Value, &mut C, &str, usize) -> Bytes + Send>;

enum Step<C> {
    Event(Render<C>),
    /// The text at `pointer` in the stored answer, one event per piece (`text::pieces`), or one
    /// event for the whole text when `whole` (even an empty one).
    Text {
        pointer: String,
        whole: bool,
        at: usize,
        piece: usize,
        render: RenderPiece<C>,
    },
}

/// The steps of a replay and the state its events share (`C`: a chunk header, a sequence
/// number), over the stored answer they are rendered from.
pub struct Steps<C> {
    context: C,
    steps: VecDeque<Step<C>>,
}

impl<C: Send + 'static> Steps<C> {
    pub fn new(context: C) -> Self {
        Steps {
            context,
            steps: VecDeque::new(),
        }
    }

    /// One event.
    pub fn event(&mut self, render: impl FnOnce(&Value, &mut C) -> Bytes + Send + 'static) {
        self.steps.push_back(Step::Event(Box::new(render)));
    }

    /// One event per piece of the text at `pointer` (none when it is empty or not a string).
    pub fn pieces(
        &mut self,
        pointer: String,
        render: impl FnMut(&Value, &mut C, &str, usize) -> Bytes + Send + 'static,
    ) {
        self.text(pointer, false, render);
    }

    /// One event with the whole text at `pointer` (`""` when it is not a string).
    pub fn whole(
        &mut self,
        pointer: String,
        render: impl FnMut(&Value, &mut C, &str, usize) -> Bytes + Send + 'static,
    ) {
        self.text(pointer, true, render);
    }

    fn text(
        &mut self,
        pointer: String,
        whole: bool,
        render: impl FnMut(&Value, &mut C, &str, usize) -> Bytes + Send + 'static,
    ) {
        self.steps.push_back(Step::Text {
            pointer,
            whole,
            at: 0,
            piece: 0,
            render: Box::new(render),
        });
    }

    /// The replay of `stored`, rendering one event per `next`.
    pub fn over(self, stored: Arc<Value>) -> Replay {
        Box::new(Cursor {
            stored,
            context: self.context,
            steps: self.steps,
        })
    }
}

struct Cursor<C> {
    stored: Arc<Value>,
    context: C,
    steps: VecDeque<Step<C>>,
}

impl<C> Iterator for Cursor<C> {
    type Item = Bytes;

    fn next(&mut self) -> Option<Bytes> {
        loop {
            match self.steps.front_mut()? {
                Step::Event(_) => {
                    let Some(Step::Event(render)) = self.steps.pop_front() else {
                        unreachable!("the front step is an event");
                    };
                    return Some(render(&self.stored, &mut self.context));
                }
                Step::Text {
                    pointer,
                    whole,
                    at,
                    piece,
                    render,
                } => {
                    let text = self
                        .stored
                        .pointer(pointer)
                        .and_then(Value::as_str)
                        .unwrap_or("");
                    if *whole {
                        let event = render(&self.stored, &mut self.context, text, 0);
                        self.steps.pop_front();
                        return Some(event);
                    }
                    if *at >= text.len() {
                        self.steps.pop_front();
                        continue;
                    }
                    let end = piece_end(text, *at);
                    let event = render(&self.stored, &mut self.context, &text[*at..end], *piece);
                    (*at, *piece) = (end, *piece + 1);
                    return Some(event);
                }
            }
        }
    }
}

/// Stored answers at least this long are parsed once for all the replays of them running at
/// the same time; shorter ones cost less to parse than to share.
const SHARE_FROM: usize = 16 * 1024;

/// The long answers being replayed, by the hash of their stored text.
static LIVE: LazyLock<Mutex<HashMap<[u8; 32], Weak<Value>>>> = LazyLock::new(Default::default);

/// The stored answer `text` parsed (`None` if it is not JSON). A long one is shared with the
/// replays of the same text still running, so N clients replaying one answer hold it once.
pub fn parse_shared(text: &str) -> Option<Arc<Value>> {
    if text.len() < SHARE_FROM {
        return serde_json::from_str(text).ok().map(Arc::new);
    }
    let key = *blake3::hash(text.as_bytes()).as_bytes();
    if let Some(live) = LIVE.lock().get(&key).and_then(Weak::upgrade) {
        return Some(live);
    }
    let parsed = Arc::new(serde_json::from_str(text).ok()?);
    let mut live = LIVE.lock();
    // Forget finished replays now and then: each time the map reaches a power of two, so the
    // sweep costs O(1) per insert however many long answers are being replayed.
    if live.len() >= 64 && live.len().is_power_of_two() {
        live.retain(|_, replay| replay.strong_count() > 0);
    }
    live.insert(key, Arc::downgrade(&parsed));
    Some(parsed)
}

/// A JSON pointer to `segments` (object keys or array positions), escaped as RFC 6901 asks.
pub fn pointer<S: std::fmt::Display>(base: &str, segments: &[S]) -> String {
    let mut out = base.to_string();
    for segment in segments {
        out.push('/');
        out.push_str(&segment.to_string().replace('~', "~0").replace('/', "~1"));
    }
    out
}

/// The value at `pointer` in `stored`, cloned (`null` when absent).
pub fn cloned_at(stored: &Value, pointer: &str) -> Value {
    stored.pointer(pointer).cloned().unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn steps_render_in_order_and_pieces_concatenate_back() {
        let text = "one two three four five six seven eight nine ten eleven twelve";
        let mut steps = Steps::new(0usize);
        steps.event(|_, count: &mut usize| {
            *count += 1;
            Bytes::from("start|")
        });
        steps.pieces(pointer("", &["a/b"]), |_, count, piece, i| {
            *count += 1;
            Bytes::from(format!("{i}:{piece}|"))
        });
        steps.pieces(pointer("", &["missing"]), |_, _, _, _| Bytes::from("never"));
        steps.whole(pointer("", &["empty"]), |_, _, text, _| {
            Bytes::from(format!("whole[{text}]|"))
        });
        steps.event(|stored, count| Bytes::from(format!("end {} {count}", stored["n"])));
        let replay: Vec<Bytes> = steps
            .over(Arc::new(json!({"a/b": text, "empty": "", "n": 7})))
            .collect();
        let pieces = crate::replay::text::pieces(text);
        assert_eq!(replay.len(), pieces.len() + 3);
        let mut expected = String::from("start|");
        for (i, piece) in pieces.iter().enumerate() {
            expected.push_str(&format!("{i}:{piece}|"));
        }
        expected.push_str(&format!("whole[]|end 7 {}", pieces.len() + 1));
        assert_eq!(replay.concat(), expected.as_bytes());
    }

    #[test]
    fn long_answers_replayed_at_the_same_time_share_one_copy() {
        let long = json!({"text": "words ".repeat(SHARE_FROM)}).to_string();
        let first = parse_shared(&long).unwrap();
        let second = parse_shared(&long).unwrap();
        assert!(Arc::ptr_eq(&first, &second));
        let other = json!({"text": "other ".repeat(SHARE_FROM)}).to_string();
        assert!(!Arc::ptr_eq(&first, &parse_shared(&other).unwrap()));
        assert_eq!(*first, serde_json::from_str::<Value>(&long).unwrap());
        drop((first, second));
        let again = parse_shared(&long).unwrap();
        assert_eq!(
            Arc::strong_count(&again),
            1,
            "a finished replay's copy is gone"
        );
        let short = r#"{"text":"short"}"#;
        assert!(!Arc::ptr_eq(
            &parse_shared(short).unwrap(),
            &parse_shared(short).unwrap()
        ));
        assert!(parse_shared("{not json").is_none());
        assert!(parse_shared(&long[1..]).is_none());
    }
}
