//! The queue shared by replicas (`[redis]`). A job's record is one key
//! (`{prefix}jobs:job:{id}`, JSON; it expires `jobs.retention_secs` after the job finished).
//! The queue is a stream (`{prefix}jobs:queue`, one entry per queued job) read by one
//! consumer group (`workers`) in which every replica is a consumer with a random name.
//!
//! A worker takes a new entry (XREADGROUP), or one another replica has held for
//! `jobs.claim_idle_ms` without renewing it (XAUTOCLAIM). Held entries are renewed every
//! third of that (XCLAIM to the same consumer resets their idle time) and acknowledged and
//! deleted once the job has finished and its webhook is delivered. A replica that dies stops
//! renewing, so its jobs (queued for a while, running, or owing a webhook) pass to another
//! replica: delivery is at least once. Records change through a compare-and-set script, so
//! a cancel on one replica and a worker's claim on another cannot both win.

use std::collections::HashSet;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, RedisError};

use super::record::Job;
use super::store::{Change, JobStore, Place, Retention, StoreError, Stored, Ticket};
use crate::config::{JobsConfig, RedisConfig};

const GROUP: &str = "workers";
/// Tries of one record update before giving up (each lost race means another writer won).
const CAS_TRIES: usize = 16;
/// A consumer (a replica, now gone) holding nothing and idle this long leaves the group.
const FORGET_CONSUMER_MS: u64 = 10 * 60 * 1000;

/// KEYS[1]: the queue, KEYS[2]: where the takeover scan stopped.
/// ARGV[1]: the group, ARGV[2]: this consumer, ARGV[3]: `claim_idle_ms`.
/// An entry another consumer left idle that long, else a new one: {taken over (1/0), entry
/// id, job id}; false when there is neither.
static NEXT: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r#"
local cursor = redis.call('GET', KEYS[2]) or '0-0'
local claimed = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], cursor, 'COUNT', 1)
if claimed[1] ~= cursor then redis.call('SET', KEYS[2], claimed[1]) end
local entry = claimed[2][1]
if entry then return {1, entry[1], entry[2][2]} end
local read = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', 1, 'STREAMS', KEYS[1], '>')
if read then
  entry = read[1][2][1]
  if entry then return {0, entry[1], entry[2][2]} end
end
return false
"#,
    )
});

/// KEYS[1]: a record; ARGV[1]: its value as read, ARGV[2]: the new value, ARGV[3]: seconds
/// to keep it once finished (0: no expiry). 1 if written, 0 if it changed since it was read.
/// The expiry is set once, when the job first finishes; later writes keep it.
static SWAP: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r#"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if tonumber(ARGV[3]) > 0 and redis.call('TTL', KEYS[1]) < 0 then
  redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
else
  redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL')
end
return 1
"#,
    )
});

/// KEYS[1]: the queue; ARGV[1]: the group, ARGV[2]: this consumer, ARGV[3]: the idle time
/// to give them (0 renews; `claim_idle_ms` hands them to the next replica that looks),
/// ARGV[4..]: entries it holds. Returns those it no longer owns.
static RENEW: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r#"
local lost = {}
for i = 4, #ARGV do
  local pending = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if pending[1] and pending[1][2] == ARGV[2] then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'IDLE', ARGV[3], 'JUSTID')
  else
    table.insert(lost, ARGV[i])
  end
end
return lost
"#,
    )
});

/// KEYS[1]: the queue; ARGV[1]: the group, ARGV[2]: idle ms. Removes consumers (replicas
/// gone) that hold nothing and have been idle that long; returns how many.
static FORGET: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r#"
local removed = 0
for _, info in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local c = {}
  for i = 1, #info, 2 do c[info[i]] = info[i + 1] end
  if c['pending'] == 0 and c['idle'] > tonumber(ARGV[2]) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], c['name'])
    removed = removed + 1
  end
end
return removed
"#,
    )
});

pub struct RedisJobs {
    client: Client,
    prefix: String,
    /// This replica in the consumer group.
    consumer: String,
    timeout: Duration,
    connect_timeout: Duration,
    claim_idle_ms: u64,
    retention_secs: u64,
    /// `None` until the first connection succeeds (the manager reconnects by itself).
    conn: Mutex<Option<ConnectionManager>>,
    /// Entries this replica holds (running, waiting to run again, or owing a webhook).
    held: Mutex<HashSet<String>>,
    /// Entries not yet taken by any replica, as of the last housekeeping.
    depth: AtomicUsize,
}

impl RedisJobs {
    pub fn new(redis: &RedisConfig, jobs: &JobsConfig) -> Result<RedisJobs, StoreError> {
        Ok(RedisJobs {
            client: crate::replica::client(redis)?,
            prefix: redis.key_prefix.clone(),
            consumer: format!("deja-{:016x}", fastrand::u64(..)),
            timeout: Duration::from_millis(redis.timeout_ms),
            connect_timeout: Duration::from_millis(redis.connect_timeout_ms),
            claim_idle_ms: jobs.claim_idle_ms,
            retention_secs: jobs.retention_secs,
            conn: Mutex::new(None),
            held: Mutex::new(HashSet::new()),
            depth: AtomicUsize::new(0),
        })
    }

    fn queue_key(&self) -> String {
        format!("{}jobs:queue", self.prefix)
    }

    fn cursor_key(&self) -> String {
        format!("{}jobs:takeover-cursor", self.prefix)
    }

    fn record_key(&self, id: &str) -> String {
        format!("{}jobs:job:{id}", self.prefix)
    }

    async fn conn(&self) -> Result<ConnectionManager, StoreError> {
        if let Some(conn) = self.conn.lock().clone() {
            return Ok(conn);
        }
        let settings = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(1);
        let conn = tokio::time::timeout(
            self.connect_timeout,
            self.client.get_connection_manager_with_config(settings),
        )
        .await
        .map_err(|_| StoreError::Timeout)??;
        *self.conn.lock() = Some(conn.clone());
        Ok(conn)
    }

    /// Runs `work` on the shared connection, within the command timeout (a request must
    /// never hang on Redis).
    async fn run<T, F, Fut>(&self, work: F) -> Result<T, StoreError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        let conn = self.conn().await?;
        match tokio::time::timeout(self.timeout, work(conn)).await {
            Ok(result) => Ok(result?),
            Err(_) => Err(StoreError::Timeout),
        }
    }

    /// The consumer group, made if missing (first use, or a Redis that lost its data).
    async fn make_group(&self) -> Result<(), StoreError> {
        let queue = self.queue_key();
        let made = self
            .run(|mut conn| async move {
                redis::cmd("XGROUP")
                    .arg("CREATE")
                    .arg(queue)
                    .arg(GROUP)
                    .arg("0")
                    .arg("MKSTREAM")
                    .query_async::<()>(&mut conn)
                    .await
            })
            .await;
        match made {
            Err(StoreError::Redis(err)) if err.code() == Some("BUSYGROUP") => Ok(()),
            other => other,
        }
    }

    async fn take(&self) -> Result<Option<(i64, String, String)>, StoreError> {
        let (queue, cursor) = (self.queue_key(), self.cursor_key());
        let (consumer, idle) = (self.consumer.clone(), self.claim_idle_ms);
        self.run(|mut conn| async move {
            NEXT.key(queue)
                .key(cursor)
                .arg(GROUP)
                .arg(consumer)
                .arg(idle)
                .invoke_async(&mut conn)
                .await
        })
        .await
    }

    /// Acknowledges `entry` and drops it from the stream; with `again`, queues the job anew
    /// in the same transaction.
    async fn settle(&self, entry: Option<String>, again: Option<&str>) -> Result<(), StoreError> {
        let queue = self.queue_key();
        let mut pipe = redis::pipe();
        pipe.atomic();
        if let Some(id) = again {
            pipe.cmd("XADD")
                .arg(&queue)
                .arg("*")
                .arg("id")
                .arg(id)
                .ignore();
        }
        if let Some(entry) = &entry {
            pipe.cmd("XACK").arg(&queue).arg(GROUP).arg(entry).ignore();
            pipe.cmd("XDEL").arg(&queue).arg(entry).ignore();
        }
        self.run(|mut conn| async move { pipe.query_async::<()>(&mut conn).await })
            .await
    }

    /// Renews the entries this replica holds (`idle_ms` 0), or makes them ready to take
    /// over (`claim_idle_ms`); forgets those another replica took over.
    async fn renew(&self, idle_ms: u64) -> Result<(), StoreError> {
        let held: Vec<String> = self.held.lock().iter().cloned().collect();
        if held.is_empty() {
            return Ok(());
        }
        let (queue, consumer) = (self.queue_key(), self.consumer.clone());
        let lost: Vec<String> = self
            .run(|mut conn| async move {
                let mut call = RENEW.key(queue);
                call.arg(GROUP).arg(consumer).arg(idle_ms);
                for entry in &held {
                    call.arg(entry);
                }
                call.invoke_async(&mut conn).await
            })
            .await?;
        if !lost.is_empty() {
            tracing::warn!(
                entries = lost.len(),
                "jobs held here were taken over by another replica (this one stalled past jobs.claim_idle_ms)"
            );
            let mut held = self.held.lock();
            for entry in &lost {
                held.remove(entry);
            }
        }
        Ok(())
    }

    /// Entries not yet taken, and consumers gone for good removed.
    async fn survey(&self) -> Result<usize, StoreError> {
        let queue = self.queue_key();
        let (length, pending): (usize, (usize, redis::Value, redis::Value, redis::Value)) = self
            .run(|mut conn| {
                let queue = queue.clone();
                async move {
                    redis::pipe()
                        .cmd("XLEN")
                        .arg(&queue)
                        .cmd("XPENDING")
                        .arg(&queue)
                        .arg(GROUP)
                        .query_async(&mut conn)
                        .await
                }
            })
            .await?;
        self.run(|mut conn| async move {
            FORGET
                .key(queue)
                .arg(GROUP)
                .arg(FORGET_CONSUMER_MS)
                .invoke_async::<i64>(&mut conn)
                .await
        })
        .await?;
        Ok(length.saturating_sub(pending.0))
    }

    fn release(&self, ticket: &Ticket) {
        if let Some(entry) = &ticket.entry {
            self.held.lock().remove(entry);
        }
    }
}

fn no_group(err: &StoreError) -> bool {
    matches!(err, StoreError::Redis(err) if err.code() == Some("NOGROUP")
        || err.to_string().contains("NOGROUP"))
}

impl JobStore for RedisJobs {
    fn submit(&self, job: Job) -> Stored<'_, Job> {
        Box::pin(async move {
            let record = serde_json::to_string(&job)?;
            let mut pipe = redis::pipe();
            pipe.atomic()
                .cmd("SET")
                .arg(self.record_key(&job.id))
                .arg(record)
                .ignore()
                .cmd("XADD")
                .arg(self.queue_key())
                .arg("*")
                .arg("id")
                .arg(&job.id)
                .ignore();
            self.run(|mut conn| async move { pipe.query_async::<()>(&mut conn).await })
                .await?;
            Ok(job)
        })
    }

    fn load<'a>(&'a self, id: &'a str) -> Stored<'a, Option<Job>> {
        Box::pin(async move {
            let key = self.record_key(id);
            let record: Option<String> =
                self.run(|mut conn| async move {
                    redis::cmd("GET").arg(key).query_async(&mut conn).await
                })
                .await?;
            Ok(match record {
                Some(text) => Some(serde_json::from_str(&text)?),
                None => None,
            })
        })
    }

    fn update<'a>(&'a self, id: &'a str, change: Change<'a>) -> Stored<'a, Option<(Job, bool)>> {
        Box::pin(async move {
            let key = self.record_key(id);
            for _ in 0..CAS_TRIES {
                let read = key.clone();
                let old: Option<String> = self
                    .run(|mut conn| async move {
                        redis::cmd("GET").arg(read).query_async(&mut conn).await
                    })
                    .await?;
                let Some(old) = old else { return Ok(None) };
                let mut job: Job = serde_json::from_str(&old)?;
                if !change(&mut job) {
                    return Ok(Some((job, false)));
                }
                let new = serde_json::to_string(&job)?;
                let keep = if job.status.finished() {
                    self.retention_secs
                } else {
                    0
                };
                let write = key.clone();
                let swapped: i64 = self
                    .run(|mut conn| async move {
                        SWAP.key(write)
                            .arg(old)
                            .arg(new)
                            .arg(keep)
                            .invoke_async(&mut conn)
                            .await
                    })
                    .await?;
                if swapped == 1 {
                    return Ok(Some((job, true)));
                }
            }
            Err(StoreError::Contended(id.to_string()))
        })
    }

    fn next(&self) -> Stored<'_, Option<Ticket>> {
        Box::pin(async move {
            let taken = match self.take().await {
                Err(err) if no_group(&err) => {
                    self.make_group().await?;
                    self.take().await?
                }
                other => other?,
            };
            Ok(taken.map(|(taken_over, entry, id)| {
                self.held.lock().insert(entry.clone());
                Ticket {
                    id,
                    taken_over: taken_over == 1,
                    entry: Some(entry),
                }
            }))
        })
    }

    fn done(&self, ticket: Ticket) -> Stored<'_, ()> {
        self.release(&ticket);
        Box::pin(self.settle(ticket.entry, None))
    }

    fn requeue(&self, ticket: Ticket, _place: Place) -> Stored<'_, ()> {
        // Back of the stream either way: with several replicas taking jobs, order is only
        // roughly kept.
        self.release(&ticket);
        Box::pin(async move { self.settle(ticket.entry, Some(&ticket.id)).await })
    }

    fn abandon(&self, ticket: Ticket) {
        self.release(&ticket);
    }

    fn depth(&self) -> usize {
        self.depth.load(Ordering::Relaxed)
    }

    fn recover(&self, _retention: Retention) -> Result<Vec<Ticket>, StoreError> {
        // Nothing to do at start: what a dead replica held is taken over through the stream,
        // and Redis expires finished jobs itself.
        Ok(Vec::new())
    }

    fn housekeeping(&self, _retention: Retention) -> Stored<'_, usize> {
        Box::pin(async move {
            self.renew(0).await?;
            match self.survey().await {
                Ok(depth) => self.depth.store(depth, Ordering::Relaxed),
                Err(err) if no_group(&err) => {}
                Err(err) => return Err(err),
            }
            Ok(0)
        })
    }

    fn hand_back(&self) -> Stored<'_, ()> {
        Box::pin(async move {
            let held = self.held.lock().len();
            self.renew(self.claim_idle_ms).await?;
            if held > 0 {
                tracing::info!(jobs = held, "jobs held here handed to the other replicas");
            }
            Ok(())
        })
    }

    fn housekeeping_every(&self) -> Duration {
        Duration::from_millis(self.claim_idle_ms / 3)
    }
}
