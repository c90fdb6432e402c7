//! The leading client's end of a streamed miss. The capture hands every chunk over without
//! waiting: chunks the client has no room for yet queue here, so a client that stops reading
//! cannot stall the capture, and with it the identical requests waiting for the answer.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use futures_util::Stream;
use tokio::sync::mpsc::{self, error::TrySendError};

use crate::wire::body::BoxError;

/// A client this far behind has stopped reading: it is cut off (its stream ends in an error)
/// rather than allowed to hold any amount of memory.
const MAX_BACKLOG_BYTES: usize = 16 << 20;

type Item = Result<Bytes, BoxError>;

pub(super) struct ClientFeed {
    tx: mpsc::Sender<Item>,
    backlog: VecDeque<Item>,
    backlog_bytes: usize,
    gone: bool,
    cut_off: Arc<AtomicBool>,
}

impl ClientFeed {
    /// The feed, and the stream that becomes the client's response body.
    pub(super) fn new() -> (ClientFeed, impl Stream<Item = Item> + Send + 'static) {
        let (tx, rx) = mpsc::channel::<Item>(32);
        let cut_off = Arc::new(AtomicBool::new(false));
        let feed = ClientFeed {
            tx,
            backlog: VecDeque::new(),
            backlog_bytes: 0,
            gone: false,
            cut_off: cut_off.clone(),
        };
        let body = futures_util::stream::unfold((rx, cut_off), |(mut rx, cut_off)| async move {
            match rx.recv().await {
                Some(item) => Some((item, (rx, cut_off))),
                // A cut-off client must not mistake the end of what it got for the whole answer.
                None if cut_off.swap(false, Ordering::Relaxed) => {
                    let err: BoxError = "client too slow: stream cut off".into();
                    Some((Err(err), (rx, cut_off)))
                }
                None => None,
            }
        });
        (feed, body)
    }

    /// Queues `item` for the client (dropped if the client has left or was cut off).
    pub(super) fn push(&mut self, item: Item) {
        if self.gone {
            return;
        }
        let item = if self.backlog.is_empty() {
            match self.tx.try_send(item) {
                Ok(()) => return,
                Err(TrySendError::Closed(_)) => {
                    self.gone = true;
                    return;
                }
                Err(TrySendError::Full(item)) => item,
            }
        } else {
            item
        };
        self.backlog_bytes += item.as_ref().map_or(0, Bytes::len);
        self.backlog.push_back(item);
        if self.backlog_bytes > MAX_BACKLOG_BYTES {
            tracing::warn!("a client stopped reading its stream; cut off");
            self.cut_off.store(true, Ordering::Relaxed);
            self.leave();
        }
    }

    /// The client has left (or was cut off): nothing more reaches it.
    pub(super) fn is_gone(&self) -> bool {
        self.gone
    }

    /// Chunks are waiting for the client to make room.
    pub(super) fn is_behind(&self) -> bool {
        !self.backlog.is_empty()
    }

    /// Hands the oldest waiting chunk over once the client has room. Cancel-safe: a chunk
    /// leaves the backlog only together with its send.
    pub(super) async fn flush_one(&mut self) {
        let Ok(permit) = self.tx.reserve().await else {
            self.leave();
            return;
        };
        if let Some(item) = self.backlog.pop_front() {
            self.backlog_bytes -= item.as_ref().map_or(0, Bytes::len);
            permit.send(item);
        }
    }

    /// Hands over everything still waiting (or stops when the client leaves).
    pub(super) async fn drain(mut self) {
        while self.is_behind() {
            self.flush_one().await;
        }
    }

    fn leave(&mut self) {
        self.gone = true;
        self.backlog.clear();
        self.backlog_bytes = 0;
    }
}
