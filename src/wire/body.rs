//! The response body type every handler returns, and small constructors for it.

use std::convert::Infallible;

use bytes::Bytes;
use futures_util::Stream;
use http_body_util::{BodyExt, Full, StreamBody, combinators::UnsyncBoxBody};
use hyper::body::Frame;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A boxed body: a buffered answer (cache hit, error) or a live relay of the upstream's stream.
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// A body whose bytes are all known now.
pub fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    Full::new(bytes.into())
        .map_err(|never: Infallible| match never {})
        .boxed_unsync()
}

/// A body that yields chunks as the stream produces them (never buffered whole).
pub fn streaming<S>(stream: S) -> ProxyBody
where
    S: Stream<Item = Result<Bytes, BoxError>> + Send + 'static,
{
    use futures_util::StreamExt;
    StreamBody::new(stream.map(|chunk| chunk.map(Frame::data))).boxed_unsync()
}
