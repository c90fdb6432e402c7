//! Several deja replicas, one cache (`[redis]`). Each replica keeps serving every hit from its
//! own sled store and vector index; what one stores or deletes is written to Redis and
//! appended to a shared log (a Redis stream) that every replica tails and applies.
//!
//! - `codec`: the value written per entry, and log positions
//! - `publish`: local stores and deletes → Redis (queued; kept and sent again while Redis is away)
//! - `follow`: joining (load or replay before serving), then tailing the log
//! - `limits`: per-key rpm, tpm and budgets counted across replicas (Lua scripts)
//! - `leases`: identical misses on several replicas make one upstream call
//! - `metrics`: the `deja_redis_*` and `deja_replica_*` series
//!
//! Redis trouble never fails a request: publishing is off the request path, and a replica
//! that cannot reach Redis keeps serving its own entries, says so once and in a metric.

mod codec;
mod follow;
mod leases;
pub mod limits;
pub mod metrics;
mod publish;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, IntoConnectionInfo};

use crate::cache::Cache;
use crate::config::RedisConfig;

/// The state one replica shares with its publishing and following tasks.
pub struct Replica {
    /// Random per process: a replica skips its own events in the log.
    id: String,
    config: RedisConfig,
    client: Client,
    /// Commands other than the log tail (which blocks, so it has its own connection).
    /// `None` until the first connection succeeds.
    conn: Mutex<Option<ConnectionManager>>,
    /// The log tail's own connection (a blocking XREAD would hold up other commands).
    tail: tokio::sync::Mutex<Option<redis::aio::MultiplexedConnection>>,
    cache: Arc<Cache>,
    /// The embedder id stored vectors were made with (`Cache::meta("embedder")`).
    embedder: String,
    up: AtomicBool,
    /// Requests waiting on another replica's call, by exact key (`leases`).
    waiters: Arc<leases::Waiters>,
    /// Counters for `/metrics`.
    pub stats: Stats,
}

#[derive(Default)]
pub struct Stats {
    /// Entries and deletes applied from other replicas.
    pub applied: AtomicU64,
    /// Events written to Redis.
    pub published: AtomicU64,
    /// Redis commands that failed or timed out.
    pub failures: AtomicU64,
    /// Full reloads from the entries in Redis (new replica, or log trimmed past it).
    pub resyncs: AtomicU64,
    /// Limit checks (rpm, or a call's tpm and budget) made locally only because Redis did not
    /// answer.
    pub local_limits: AtomicU64,
    /// Leases on in-flight misses claimed after another replica's ended without an answer
    /// (it failed, or died and its lease expired).
    pub takeovers: AtomicU64,
}

#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis: no answer within the timeout")]
    Timeout,
    #[error("cache store: {0}")]
    Store(#[from] crate::cache::store::StoreError),
}

impl Replica {
    /// This replica as coalescing's seam to the others (`Coalescer::set_remote`).
    pub fn leases(self: &Arc<Self>) -> Arc<dyn crate::cache::inflight::Remote> {
        Arc::new(leases::Leases(self.clone()))
    }

    /// Connects (or keeps trying in the background), loads what other replicas stored, then
    /// starts publishing and following. Returns once this replica has caught up, Redis turned
    /// out unreachable, or `join_timeout_secs` passed: it then serves what it holds.
    pub async fn start(
        cache: Arc<Cache>,
        config: RedisConfig,
    ) -> Result<Arc<Replica>, ReplicaError> {
        let client = client(&config)?;
        let embedder = cache.meta("embedder").unwrap_or_default();
        let replica = Arc::new(Replica {
            id: format!("{:016x}", fastrand::u64(..)),
            config,
            client,
            conn: Mutex::new(None),
            tail: tokio::sync::Mutex::new(None),
            cache: cache.clone(),
            embedder,
            up: AtomicBool::new(false),
            waiters: Arc::default(),
            stats: Stats::default(),
        });
        let sink = publish::start(replica.clone());
        cache.set_events(sink);
        let join = Duration::from_secs(replica.config.join_timeout_secs);
        let joined = tokio::time::timeout(join, follow::join(&replica)).await;
        let pos = match joined {
            Ok(Ok(pos)) => Some(pos),
            Ok(Err(err)) => {
                tracing::warn!(error = %err, "redis unreachable at start; serving local entries only until it is back");
                None
            }
            Err(_) => {
                tracing::warn!(
                    secs = join.as_secs(),
                    "joining the cluster took too long; serving what is loaded, catching up in the background"
                );
                None
            }
        };
        tokio::spawn(follow::run(replica.clone(), pos));
        Ok(replica)
    }

    /// Whether the last Redis command succeeded.
    pub fn redis_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    fn key(&self, suffix: &str) -> String {
        format!("{}{suffix}", self.config.key_prefix)
    }

    fn log_key(&self) -> String {
        self.key("log")
    }

    fn entry_key(&self, exact: &crate::cache::key::Hash32) -> String {
        self.key(&format!("entry:{}", hex(exact.as_bytes())))
    }

    /// The claim on a miss in flight under `exact` (`leases`).
    fn lease_key(&self, exact: &crate::cache::key::Hash32) -> String {
        self.key(&format!("lease:{}", hex(exact.as_bytes())))
    }

    fn timeout(&self) -> Duration {
        Duration::from_millis(self.config.timeout_ms)
    }

    /// The shared connection, made on first use (and remade by the manager after a drop).
    async fn conn(&self) -> Result<ConnectionManager, ReplicaError> {
        if let Some(conn) = self.conn.lock().clone() {
            return Ok(conn);
        }
        let settings = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_millis(self.config.connect_timeout_ms)))
            .set_response_timeout(Some(self.timeout()))
            .set_number_of_retries(1);
        let conn = tokio::time::timeout(
            Duration::from_millis(self.config.connect_timeout_ms),
            self.client.get_connection_manager_with_config(settings),
        )
        .await
        .map_err(|_| ReplicaError::Timeout)??;
        *self.conn.lock() = Some(conn.clone());
        Ok(conn)
    }

    /// Runs one Redis call under the command timeout, and notes whether Redis is up (a
    /// change is logged once, not per command).
    async fn call<T>(
        &self,
        timeout: Duration,
        work: impl std::future::Future<Output = Result<T, ReplicaError>>,
    ) -> Result<T, ReplicaError> {
        let result = match tokio::time::timeout(timeout, work).await {
            Ok(result) => result,
            Err(_) => Err(ReplicaError::Timeout),
        };
        match &result {
            Ok(_) => {
                if !self.up.swap(true, Ordering::Relaxed) {
                    tracing::info!("redis reachable; sharing the cache with other replicas");
                }
            }
            Err(err) => {
                self.stats.failures.fetch_add(1, Ordering::Relaxed);
                if self.up.swap(false, Ordering::Relaxed) {
                    tracing::warn!(error = %err, "redis unreachable; serving local entries only, sharing resumes when it is back");
                }
            }
        }
        result
    }
}

/// A client for `[redis]` (the password from its own setting, never the URL). It connects
/// on first use. The job queue (`crate::jobs`) uses it too.
pub fn client(config: &RedisConfig) -> Result<Client, redis::RedisError> {
    let mut info = config.url.as_str().into_connection_info()?;
    if let Some(password) = &config.password {
        let settings = info
            .redis_settings()
            .clone()
            .set_password(password.expose());
        info = info.set_redis_settings(settings);
    }
    Client::open(info)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    if text.len() != 64 {
        return None;
    }
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}
