//! Coalescing across replicas: identical misses on different replicas make one upstream call.
//!
//! A replica about to send a miss upstream (already the leader of its own identical requests,
//! `crate::cache::inflight`) claims the exact key in Redis (`{prefix}lease:{key}`, SET NX PX
//! `lease_ms`), and renews the claim while its call runs. A replica that finds the key claimed
//! waits for the answer to reach its own store through the log (woken when the follower
//! applies that key), and serves it as coalesced.
//!
//! When the leader's answer is published, the same pipeline as the entry and its log event
//! marks the lease `stored` (`publish`, for a couple of seconds; deleting the entry deletes
//! the mark), so a waiting replica that sees the mark knows the entry is in the log ahead of
//! it. A leader that ends without an answer deletes its lease,
//! and one that dies stops renewing it: either way a waiting replica then claims the key and
//! goes upstream itself. Any Redis error means no coordination: the request goes upstream,
//! as it would without `[redis]`.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use parking_lot::Mutex;
use tokio::sync::{Notify, oneshot};

use super::{Replica, ReplicaError};
use crate::cache::Requirements;
use crate::cache::inflight::{Claim, Remote, RemoteLease};
use crate::cache::key::Hash32;

/// How often a waiting replica looks at the lease (a released or expired one is noticed
/// this late at most; an arriving answer wakes it at once).
const POLL: Duration = Duration::from_millis(50);
/// How long a replica that saw the `stored` mark waits for the entry to arrive through the
/// log before it gives up and goes upstream (the lag is milliseconds).
const ARRIVAL: Duration = Duration::from_secs(1);
/// The longest a replica waits on another's call (the default upstream timeout).
const MAX_WAIT: Duration = Duration::from_secs(600);
/// Any live entry.
const ANY: Requirements = Requirements {
    max_age_ms: None,
    needs_usage: false,
};
/// The lease's value once its answer is published.
pub(super) const STORED: &str = "stored";
/// How long the `stored` mark stays (it only bridges the log's lag).
pub(super) const STORED_MARK_MS: u64 = 2000;

/// KEYS[1]: the lease; ARGV[1]: this claim's token, ARGV[2]: the lease's life (ms).
/// Returns 1 when claimed, 0 while another replica holds it, 2 once its answer is published.
static CLAIM: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r#"
local held = redis.call('GET', KEYS[1])
if not held then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if held == 'stored' then return 2 end
return 0
"#,
    )
});

/// Extends the lease if this claim still holds it.
static RENEW: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"#,
    )
});

/// Deletes the lease if this claim still holds it.
static RELEASE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"#,
    )
});

/// The replicas waiting on an exact key, woken when the log brings an entry for it.
#[derive(Default)]
pub(super) struct Waiters(Mutex<HashMap<Hash32, (Arc<Notify>, usize)>>);

impl Waiters {
    fn register(self: &Arc<Self>, exact: Hash32) -> Waiting {
        let mut map = self.0.lock();
        let (notify, count) = map.entry(exact).or_default();
        *count += 1;
        Waiting {
            notify: notify.clone(),
            waiters: self.clone(),
            exact,
        }
    }

    /// An entry for `exact` was applied from the log (called on the applying thread).
    pub(super) fn arrived(&self, exact: &Hash32) {
        let map = self.0.lock();
        if let Some((notify, _)) = map.get(exact) {
            notify.notify_waiters();
        }
    }
}

struct Waiting {
    notify: Arc<Notify>,
    waiters: Arc<Waiters>,
    exact: Hash32,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        let mut map = self.waiters.0.lock();
        if let Some((_, count)) = map.get_mut(&self.exact) {
            *count -= 1;
            if *count == 0 {
                map.remove(&self.exact);
            }
        }
    }
}

/// `Remote` through Redis.
pub(super) struct Leases(pub(super) Arc<Replica>);

impl Remote for Leases {
    fn claim(&self, exact: Hash32, needs: Requirements) -> BoxFuture<'_, Claim> {
        Box::pin(claim(&self.0, exact, needs))
    }
}

enum State {
    Claimed,
    Held,
    Stored,
}

async fn claim(replica: &Arc<Replica>, exact: Hash32, needs: Requirements) -> Claim {
    // While Redis is known to be away, no request waits for it.
    if !replica.redis_up() {
        return Claim::Alone;
    }
    let key = replica.lease_key(&exact);
    let token = format!("{}-{:016x}", replica.id, fastrand::u64(..));
    let waiting = replica.waiters.register(exact);
    let started = Instant::now();
    let mut stored_since: Option<Instant> = None;
    let mut held = false;
    loop {
        // Registered before looking, so an entry applied after the look still wakes the wait.
        let arrival = waiting.notify.notified();
        tokio::pin!(arrival);
        arrival.as_mut().enable();
        if let Ok(Some(_)) = replica.cache.lookup_exact(&exact, needs) {
            return Claim::Answered;
        }
        match try_claim(replica, &key, &token).await {
            Err(_) => return Claim::Alone,
            Ok(State::Claimed) => {
                if held {
                    replica.stats.takeovers.fetch_add(1, Ordering::Relaxed);
                }
                return Claim::Lead(Box::new(Lease::hold(replica.clone(), key, token)));
            }
            Ok(State::Held) => held = true,
            Ok(State::Stored) => {
                // Already here but not usable by this request (`max-age`, usage): no wait.
                if let Ok(Some(_)) = replica.cache.lookup_exact(&exact, ANY) {
                    return Claim::Alone;
                }
                stored_since.get_or_insert_with(Instant::now);
            }
        }
        let gave_up = stored_since.is_some_and(|since| since.elapsed() > ARRIVAL);
        if gave_up || started.elapsed() > MAX_WAIT {
            return Claim::Alone;
        }
        tokio::select! {
            () = &mut arrival => {}
            () = tokio::time::sleep(POLL) => {}
        }
    }
}

async fn try_claim(replica: &Replica, key: &str, token: &str) -> Result<State, ReplicaError> {
    let state: i64 = replica
        .call(replica.timeout(), async {
            let mut conn = replica.conn().await?;
            Ok(CLAIM
                .key(key)
                .arg(token)
                .arg(replica.config.lease_ms)
                .invoke_async(&mut conn)
                .await?)
        })
        .await?;
    Ok(match state {
        1 => State::Claimed,
        2 => State::Stored,
        _ => State::Held,
    })
}

/// A held lease: a task renews it until the leader finishes, then releases it unless the
/// answer was stored (its publication ends it).
struct Lease {
    done: Option<oneshot::Sender<bool>>,
}

impl Lease {
    fn hold(replica: Arc<Replica>, key: String, token: String) -> Lease {
        let (done, mut finished) = oneshot::channel::<bool>();
        let every = Duration::from_millis(replica.config.lease_ms / 3).max(POLL);
        tokio::spawn(async move {
            let stored = loop {
                tokio::select! {
                    result = &mut finished => break result.unwrap_or(false),
                    () = tokio::time::sleep(every) => {
                        // Lost (it expired, and another replica may hold it now): stop renewing.
                        // A Redis error is tried again at the next turn.
                        if let Ok(0) = script(&replica, &RENEW, &key, &token).await {
                            break (&mut finished).await.unwrap_or(false);
                        }
                    }
                }
            };
            if !stored {
                let _ = script(&replica, &RELEASE, &key, &token).await;
            }
        });
        Lease { done: Some(done) }
    }
}

impl RemoteLease for Lease {
    fn stored(mut self: Box<Self>) {
        if let Some(done) = self.done.take() {
            let _ = done.send(true);
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(done) = self.done.take() {
            let _ = done.send(false);
        }
    }
}

async fn script(
    replica: &Replica,
    script: &redis::Script,
    key: &str,
    token: &str,
) -> Result<i64, ReplicaError> {
    replica
        .call(replica.timeout(), async {
            let mut conn = replica.conn().await?;
            Ok(script
                .key(key)
                .arg(token)
                .arg(replica.config.lease_ms)
                .invoke_async(&mut conn)
                .await?)
        })
        .await
}
