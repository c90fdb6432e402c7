//! Joining the cluster and following the shared log.
//!
//! A replica remembers the last log position it applied (in its own store, so a restart
//! resumes there). At start, and whenever Redis comes back, it checks that position against
//! the log: still covered → it replays from there; never set, trimmed away, or beyond the
//! log's end (Redis lost its data) → it loads every entry from Redis, then replays the
//! events written since the load began (applying an entry twice changes nothing).

use std::sync::atomic::Ordering;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use redis::Value;
use redis::streams::{StreamId, StreamRangeReply, StreamReadReply};

use super::codec::{self, LogPos};
use super::{Replica, ReplicaError, unhex};
use crate::cache::key::Hash32;
use crate::cache::store::LOCAL_ID_BITS;

/// Where the applied position is kept in the local store.
const POS_META: &str = "replica.log_pos";
/// Events per read.
const READ_COUNT: usize = 512;
/// How long one tail read waits for new events.
const BLOCK_MS: u64 = 1000;
/// Keys per SCAN step and per MGET while loading.
const LOAD_BATCH: usize = 500;
/// Pause before trying Redis again after a failure.
const BACKOFF: Duration = Duration::from_millis(500);

/// Numbers given to replicas' stores (the high bits of their ids); past it they are reused.
/// Ids stay below 2^53, so JSON readers (the dashboard) read them exactly.
const REPLICA_NUMBERS: u64 = (1 << (53 - LOCAL_ID_BITS)) - 1;

/// KEYS[1]: the highest number given; ARGV[1]: this store's number (0: none yet). A store
/// without one gets the next; one with a number raises the highest to it, so after Redis
/// lost its data the numbers in use are learnt back as the replicas rejoin.
static NUMBER: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r#"
local held = tonumber(ARGV[1])
if held > 0 then
  if held > tonumber(redis.call('GET', KEYS[1]) or '0') then
    redis.call('SET', KEYS[1], held)
  end
  return held
end
return redis.call('INCR', KEYS[1])
"#,
    )
});

/// Ids unique across replicas: the first time a store joins a cluster it is numbered, and
/// its number becomes the high bits of the ids of the entries it stores from then on (other
/// replicas keep those ids when they apply them).
async fn number(replica: &Arc<Replica>) -> Result<(), ReplicaError> {
    let held = replica.cache.id_base() >> LOCAL_ID_BITS;
    let given: u64 = replica
        .call(replica.timeout(), async {
            let mut conn = replica.conn().await?;
            Ok(NUMBER
                .key(replica.key("replicas"))
                .arg(held)
                .invoke_async(&mut conn)
                .await?)
        })
        .await?;
    if held == 0 {
        let number = (given.max(1) - 1) % REPLICA_NUMBERS + 1;
        let numbered = replica.clone();
        tokio::task::spawn_blocking(move || numbered.cache.set_id_base(number << LOCAL_ID_BITS))
            .await
            .unwrap_or(Ok(()))?;
        tracing::info!(
            number,
            "numbered this replica's store: the ids of the entries it stores carry the number"
        );
    }
    Ok(())
}

/// Loads or replays until caught up with the log; returns the position reached.
pub(super) async fn join(replica: &Arc<Replica>) -> Result<LogPos, ReplicaError> {
    number(replica).await?;
    let timeout = replica.timeout();
    let log = replica.log_key();
    let (first, last) = replica
        .call(timeout, async {
            let mut conn = replica.conn().await?;
            let first: StreamRangeReply = redis::cmd("XRANGE")
                .arg(&log)
                .arg("-")
                .arg("+")
                .arg("COUNT")
                .arg(1)
                .query_async(&mut conn)
                .await?;
            // The last id ever generated, not the last one left: a log trimmed empty still
            // says whether anything was added after this replica's position.
            let info: Option<Value> = redis::cmd("XINFO")
                .arg("STREAM")
                .arg(&log)
                .query_async(&mut conn)
                .await
                .ok();
            Ok((first_pos(&first), info.as_ref().and_then(last_generated)))
        })
        .await?;
    let held = replica
        .cache
        .meta(POS_META)
        .as_deref()
        .and_then(LogPos::parse);
    let covered = match (held, first, last) {
        (Some(held), Some(first), Some(last)) => held >= first && held <= last,
        // A log trimmed empty: covered only if nothing was added since this replica's position.
        (Some(held), None, Some(last)) => held == last,
        // No log at all (Redis new or restarted empty).
        (Some(held), None, None) => held == LogPos::START,
        _ => false,
    };
    let mut pos = if covered {
        held.unwrap_or(LogPos::START)
    } else {
        let from = last.unwrap_or(LogPos::START);
        let loaded = load_all(replica).await?;
        replica.stats.resyncs.fetch_add(1, Ordering::Relaxed);
        tracing::info!(entries = loaded, "loaded the cluster's entries from redis");
        save_pos(replica, from).await;
        from
    };
    // Replay without blocking until a read comes back short.
    loop {
        let (next, read) = read_once(replica, pos, None).await?;
        pos = next;
        if read < READ_COUNT {
            return Ok(pos);
        }
    }
}

/// Tails the log for ever; after a Redis failure, waits and joins again.
pub(super) async fn run(replica: Arc<Replica>, mut pos: Option<LogPos>) {
    loop {
        let current = match pos {
            Some(current) => current,
            None => match join(&replica).await {
                Ok(current) => current,
                Err(_) => {
                    tokio::time::sleep(BACKOFF).await;
                    continue;
                }
            },
        };
        pos = match read_once(&replica, current, Some(BLOCK_MS)).await {
            Ok((next, _)) => Some(next),
            Err(_) => {
                *replica.tail.lock().await = None;
                tokio::time::sleep(BACKOFF).await;
                None
            }
        };
    }
}

/// `last-generated-id` from an XINFO STREAM reply (a flat array in RESP2, a map in RESP3).
fn last_generated(info: &Value) -> Option<LogPos> {
    let text = |v: &Value| match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    };
    let pairs: Vec<(&Value, &Value)> = match info {
        Value::Array(items) => items.chunks_exact(2).map(|p| (&p[0], &p[1])).collect(),
        Value::Map(items) => items.iter().map(|(k, v)| (k, v)).collect(),
        _ => return None,
    };
    pairs
        .into_iter()
        .find(|(k, _)| text(k).as_deref() == Some("last-generated-id"))
        .and_then(|(_, v)| LogPos::parse(&text(v)?))
}

fn first_pos(reply: &StreamRangeReply) -> Option<LogPos> {
    reply.ids.first().and_then(|id| LogPos::parse(&id.id))
}

/// Reads and applies one batch of events after `pos`; returns the new position and how many
/// events were read.
async fn read_once(
    replica: &Arc<Replica>,
    pos: LogPos,
    block_ms: Option<u64>,
) -> Result<(LogPos, usize), ReplicaError> {
    let log = replica.log_key();
    let timeout = replica.timeout() + Duration::from_millis(block_ms.unwrap_or(0));
    let reply: Option<StreamReadReply> = replica
        .call(timeout, async {
            // Blocking reads hold a connection: they get their own, never the shared one.
            let mut cmd = redis::cmd("XREAD");
            cmd.arg("COUNT").arg(READ_COUNT);
            if let Some(block) = block_ms {
                cmd.arg("BLOCK").arg(block);
            }
            cmd.arg("STREAMS").arg(&log).arg(pos.to_string());
            let reply = if block_ms.is_some() {
                let mut conn = tail_conn(replica).await?;
                cmd.query_async(&mut conn).await?
            } else {
                let mut conn = replica.conn().await?;
                cmd.query_async(&mut conn).await?
            };
            Ok(reply)
        })
        .await?;
    let ids: Vec<StreamId> = reply
        .map(|r| r.keys.into_iter().flat_map(|k| k.ids).collect())
        .unwrap_or_default();
    let Some(last) = ids.last().and_then(|id| LogPos::parse(&id.id)) else {
        return Ok((pos, 0));
    };
    let read = ids.len();
    apply(replica, ids).await?;
    save_pos(replica, last).await;
    Ok((last, read))
}

/// The connection for blocking reads, made once per replica and remade after a failure.
async fn tail_conn(replica: &Replica) -> Result<redis::aio::MultiplexedConnection, ReplicaError> {
    let mut slot = replica.tail.lock().await;
    if let Some(conn) = slot.as_ref() {
        return Ok(conn.clone());
    }
    let settings = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_millis(
            replica.config.connect_timeout_ms,
        )))
        .set_response_timeout(None);
    let conn = replica
        .client
        .get_multiplexed_async_connection_with_config(&settings)
        .await?;
    *slot = Some(conn.clone());
    Ok(conn)
}

/// Applies other replicas' events to the local store (skipping this replica's own).
async fn apply(replica: &Arc<Replica>, ids: Vec<StreamId>) -> Result<(), ReplicaError> {
    let replica = replica.clone();
    tokio::task::spawn_blocking(move || {
        for id in ids {
            if field_str(&id, "r").as_deref() == Some(replica.id.as_str()) {
                continue;
            }
            let exact = field_str(&id, "k").and_then(|k| unhex(&k)).map(Hash32);
            let created = field_str(&id, "c").and_then(|c| c.parse::<u64>().ok());
            let applied = match (field_str(&id, "op").as_deref(), exact, created) {
                (Some("put"), _, _) => match field_bytes(&id, "p") {
                    Some(payload) => apply_payload(&replica, payload)?,
                    None => false,
                },
                (Some("del"), Some(exact), Some(created)) => {
                    replica.cache.apply_removed(&exact, created)?
                }
                _ => false,
            };
            if applied {
                replica.stats.applied.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok::<_, ReplicaError>(())
    })
    .await
    .unwrap_or(Ok(()))
}

fn apply_payload(replica: &Replica, payload: &[u8]) -> Result<bool, ReplicaError> {
    let Some(decoded) = codec::decode(payload, &replica.embedder) else {
        return Ok(false);
    };
    let entry = &decoded.entry;
    let applied = (replica.cache).apply_stored(decoded.id, entry, decoded.vector.as_deref());
    // A request waiting on another replica's call for this key looks again (`leases`).
    replica.waiters.arrived(&entry.exact());
    match applied {
        Ok(applied) => Ok(applied),
        // Too large for this replica's cap: it answers that one itself.
        Err(crate::cache::store::StoreError::Oversized) => Ok(false),
        Err(err) => Err(err.into()),
    }
}

fn field_bytes<'a>(id: &'a StreamId, name: &str) -> Option<&'a [u8]> {
    match id.map.get(name)? {
        Value::BulkString(bytes) => Some(bytes.as_slice()),
        _ => None,
    }
}

fn field_str(id: &StreamId, name: &str) -> Option<String> {
    field_bytes(id, name).map(|b| String::from_utf8_lossy(b).into_owned())
}

/// Loads every entry held in Redis into the local store; returns how many were applied.
async fn load_all(replica: &Arc<Replica>) -> Result<usize, ReplicaError> {
    let pattern = replica.key("entry:*");
    let mut cursor: u64 = 0;
    let mut applied = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = replica
            .call(replica.timeout(), async {
                let mut conn = replica.conn().await?;
                Ok(redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(LOAD_BATCH)
                    .query_async(&mut conn)
                    .await?)
            })
            .await?;
        if !keys.is_empty() {
            let values: Vec<Option<Vec<u8>>> = replica
                .call(replica.timeout() * 4, async {
                    let mut conn = replica.conn().await?;
                    Ok(redis::cmd("MGET").arg(&keys).query_async(&mut conn).await?)
                })
                .await?;
            let loader = replica.clone();
            applied += tokio::task::spawn_blocking(move || {
                let mut applied = 0;
                for payload in values.into_iter().flatten() {
                    applied += usize::from(apply_payload(&loader, &payload)?);
                }
                Ok::<_, ReplicaError>(applied)
            })
            .await
            .unwrap_or(Ok(0))?;
        }
        if next == 0 {
            return Ok(applied);
        }
        cursor = next;
    }
}

/// Remembers the applied position (a failed write only means more replay after a restart).
async fn save_pos(replica: &Arc<Replica>, pos: LogPos) {
    let replica = replica.clone();
    let _ = tokio::task::spawn_blocking(move || replica.cache.set_meta(POS_META, &pos.to_string()))
        .await;
}
