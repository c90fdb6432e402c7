//! What replaying a stored answer needs, whatever the endpoint: a fresh id spliced into stored
//! JSON text, streamed hits rendered as the client reads (`lazy_replay`), the `[DONE]`-ended
//! chunk streams of chat and legacy completions, and text split into stream pieces.

pub mod chunks;
pub mod json_splice;
pub mod lazy_replay;
pub mod raw_chunk;
pub mod text;
