//! Local stores and admin deletes → Redis. The cache's observer only queues (it runs on the
//! storing thread); one task writes each batch as a pipeline: the entry under its own key
//! with the entry's expiry, an event in the log, and the end of any lease on its key
//! (`leases`). While Redis is away, the exact keys of
//! what was stored or deleted are kept and sent again once it answers.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::mpsc;

use super::{Replica, ReplicaError, codec, hex, leases};
use crate::cache::entry::Entry;
use crate::cache::events::CacheEvents;
use crate::cache::key::Hash32;

/// Events waiting for the publishing task; beyond this the key goes to `pending`.
const QUEUE: usize = 8192;
/// Events per pipeline.
const BATCH: usize = 256;
/// Keys kept while Redis is away; beyond this, the oldest are no longer re-sent (other
/// replicas get those entries only by answering them themselves).
const MAX_PENDING: usize = 100_000;
/// How often kept keys are retried while nothing new is stored.
const RETRY: Duration = Duration::from_secs(1);

enum Event {
    Put {
        exact: Hash32,
        created_ms: u64,
        expires_ms: u64,
        payload: Vec<u8>,
    },
    Del {
        exact: Hash32,
        created_ms: u64,
    },
}

/// What must be sent again, by exact key: `None` to publish the local entry (read again
/// when sent, so it is the newest), `Some(created)` for a delete.
type Pending = HashMap<Hash32, Option<u64>>;

struct Sink {
    replica: Arc<Replica>,
    queue: mpsc::Sender<Event>,
    pending: Arc<Mutex<Pending>>,
}

impl Sink {
    fn send(&self, event: Event) {
        if let Err(err) = self.queue.try_send(event) {
            let (exact, kept) = match err.into_inner() {
                Event::Put { exact, .. } => (exact, None),
                Event::Del { exact, created_ms } => (exact, Some(created_ms)),
            };
            keep(&self.pending, exact, kept);
        }
    }
}

impl CacheEvents for Sink {
    fn stored(&self, id: u64, entry: &Entry, vector: Option<&[f32]>) {
        self.send(Event::Put {
            exact: entry.exact(),
            created_ms: entry.created_ms,
            expires_ms: entry.expires_ms,
            payload: codec::encode(id, &self.replica.embedder, entry, vector),
        });
    }

    fn removed(&self, entry: &Entry) {
        self.send(Event::Del {
            exact: entry.exact(),
            created_ms: entry.created_ms,
        });
    }
}

fn keep(pending: &Mutex<Pending>, exact: Hash32, kept: Option<u64>) {
    let mut pending = pending.lock();
    if pending.len() < MAX_PENDING || pending.contains_key(&exact) {
        pending.insert(exact, kept);
    }
}

/// Starts the publishing task; returns the observer to give the cache.
pub(super) fn start(replica: Arc<Replica>) -> Arc<dyn CacheEvents> {
    let (queue, events) = mpsc::channel(QUEUE);
    let pending = Arc::new(Mutex::new(Pending::new()));
    tokio::spawn(run(replica.clone(), events, pending.clone()));
    Arc::new(Sink {
        replica,
        queue,
        pending,
    })
}

async fn run(
    replica: Arc<Replica>,
    mut events: mpsc::Receiver<Event>,
    pending: Arc<Mutex<Pending>>,
) {
    let mut retry = tokio::time::interval(RETRY);
    loop {
        let mut batch = Vec::new();
        tokio::select! {
            event = events.recv() => match event {
                Some(event) => batch.push(event),
                None => return,
            },
            _ = retry.tick() => {}
        }
        while batch.len() < BATCH {
            match events.try_recv() {
                Ok(event) => batch.push(event),
                Err(_) => break,
            }
        }
        // What was kept goes first, so a delete kept from an outage is not sent after a
        // newer store of the same key.
        let waiting = !pending.lock().is_empty();
        let kept: Vec<(Hash32, Option<u64>)> =
            if waiting && (!batch.is_empty() || redis_answers(&replica).await) {
                pending.lock().drain().collect()
            } else {
                Vec::new()
            };
        let mut all = resolve(&replica, kept).await;
        all.extend(batch);
        if all.is_empty() {
            continue;
        }
        if let Err(err) = publish(&replica, &all).await {
            tracing::debug!(error = %err, events = all.len(), "publishing to redis failed; kept for later");
            for event in all {
                match event {
                    Event::Put { exact, .. } => keep(&pending, exact, None),
                    Event::Del { exact, created_ms } => keep(&pending, exact, Some(created_ms)),
                }
            }
        }
    }
}

/// Whether Redis answers a PING (so kept keys are only read back when they can be sent).
async fn redis_answers(replica: &Replica) -> bool {
    replica
        .call(replica.timeout(), async {
            let mut conn = replica.conn().await?;
            redis::cmd("PING").query_async::<()>(&mut conn).await?;
            Ok(())
        })
        .await
        .is_ok()
}

/// Kept keys → events: a delete as it was, a store as the local entry now (skipped if it
/// has gone or expired meanwhile).
async fn resolve(replica: &Arc<Replica>, kept: Vec<(Hash32, Option<u64>)>) -> Vec<Event> {
    if kept.is_empty() {
        return Vec::new();
    }
    let replica = replica.clone();
    tokio::task::spawn_blocking(move || {
        kept.into_iter()
            .filter_map(|(exact, deleted)| match deleted {
                Some(created_ms) => Some(Event::Del { exact, created_ms }),
                None => {
                    let (id, entry, vector) = replica.cache.stored_answer(&exact)?;
                    let payload = codec::encode(id, &replica.embedder, &entry, vector.as_deref());
                    Some(Event::Put {
                        exact,
                        created_ms: entry.created_ms,
                        expires_ms: entry.expires_ms,
                        payload,
                    })
                }
            })
            .collect()
    })
    .await
    .unwrap_or_default()
}

/// One pipeline for the batch: each entry under its key (expiring with it) and each event
/// in the log, trimmed to about `log_max_len`.
async fn publish(replica: &Replica, events: &[Event]) -> Result<(), ReplicaError> {
    let log = replica.log_key();
    let mut pipe = redis::pipe();
    for event in events {
        match event {
            Event::Put {
                exact,
                created_ms,
                expires_ms,
                payload,
            } => {
                pipe.cmd("SET")
                    .arg(replica.entry_key(exact))
                    .arg(payload.as_slice())
                    .arg("PXAT")
                    .arg(*expires_ms)
                    .ignore();
                xadd(&mut pipe, replica, &log, "put", exact, *created_ms)
                    .arg("p")
                    .arg(payload.as_slice())
                    .ignore();
                // A lease on this key (a miss in flight, `leases`) ends: replicas waiting on
                // it know the entry is in the log ahead of them.
                pipe.cmd("SET")
                    .arg(replica.lease_key(exact))
                    .arg(leases::STORED)
                    .arg("XX")
                    .arg("PX")
                    .arg(leases::STORED_MARK_MS)
                    .ignore();
            }
            Event::Del { exact, created_ms } => {
                pipe.cmd("DEL").arg(replica.entry_key(exact)).ignore();
                xadd(&mut pipe, replica, &log, "del", exact, *created_ms).ignore();
                // No replica should wait for an answer that is gone (its `stored` mark).
                pipe.cmd("DEL").arg(replica.lease_key(exact)).ignore();
            }
        }
    }
    // A batch of large answers may take longer than one command.
    let timeout = replica.timeout() * 4;
    replica
        .call(timeout, async {
            let mut conn = replica.conn().await?;
            pipe.query_async::<()>(&mut conn).await?;
            Ok(())
        })
        .await?;
    replica
        .stats
        .published
        .fetch_add(events.len() as u64, Ordering::Relaxed);
    Ok(())
}

fn xadd<'a>(
    pipe: &'a mut redis::Pipeline,
    replica: &Replica,
    log: &str,
    op: &str,
    exact: &Hash32,
    created_ms: u64,
) -> &'a mut redis::Pipeline {
    pipe.cmd("XADD")
        .arg(log)
        .arg("MAXLEN")
        .arg("~")
        .arg(replica.config.log_max_len)
        .arg("*")
        .arg("r")
        .arg(&replica.id)
        .arg("op")
        .arg(op)
        .arg("k")
        .arg(hex(exact.as_bytes()))
        .arg("c")
        .arg(created_ms)
}
