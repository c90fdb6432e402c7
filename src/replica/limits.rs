//! Requests per minute across replicas: one token bucket per key in Redis, taken atomically
//! by a Lua script (the same continuously refilling bucket as `crate::managed::limits`, on Redis's
//! clock so replicas' clocks need not agree). The local bucket still counts too (for the
//! `x-ratelimit-*` headers, and as the fallback): it never refuses what the shared one
//! admits, since this replica's requests are a part of the key's requests.
//!
//! Redis down or slow: the local limit alone applies (each replica then allows the whole
//! limit), counted in `deja_limits_local_fallback_total`.

use std::sync::LazyLock;
use std::sync::atomic::Ordering;

use super::{Replica, ReplicaError};
use crate::app::App;
use crate::config::KeyConfig;
use crate::managed::limits::{RateState, Refusal};

/// KEYS[1]: the bucket; ARGV[1]: capacity per minute. Returns {admitted, retry_ms}.
static TAKE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r#"
local cap = tonumber(ARGV[1])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local used = tonumber(redis.call('HGET', KEYS[1], 'u') or '0')
local at = tonumber(redis.call('HGET', KEYS[1], 't') or tostring(now))
if now > at then
  used = math.max(0, used - cap * (now - at) / 60000)
  at = now
end
if cap - used < 1 then
  return {0, math.ceil((1 - (cap - used)) / cap * 60000)}
end
redis.call('HSET', KEYS[1], 'u', tostring(used + 1), 't', tostring(at))
redis.call('PEXPIRE', KEYS[1], 120000)
return {1, 0}
"#,
    )
});

/// Counts one request against the key's rpm: across replicas when `[redis]` is set and Redis
/// answers, and always locally (as before).
pub async fn admit(app: &App, key: &KeyConfig) -> Result<RateState, Refusal> {
    if key.rpm > 0
        && let Some(replica) = app.replica.get()
    {
        // While Redis is known to be away, no request waits for it (the log follower notices
        // when it is back).
        let shared = if replica.redis_up() {
            take(replica, key).await
        } else {
            Err(ReplicaError::Timeout)
        };
        match shared {
            Ok(None) => {}
            Ok(Some(retry_ms)) => {
                return Err(Refusal::Requests {
                    limit: key.rpm,
                    retry_ms,
                });
            }
            Err(_) => {
                replica.stats.local_limits.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    app.limits.admit(key, app.now_ms())
}

/// `None` when admitted, else the milliseconds until a request would be.
async fn take(replica: &Replica, key: &KeyConfig) -> Result<Option<u64>, ReplicaError> {
    // The key id names the bucket: the same [[keys]] on every replica share it.
    let bucket = replica.key(&format!("rpm:{}", key.id));
    let (admitted, retry_ms): (i64, i64) = replica
        .call(replica.timeout(), async {
            let mut conn = replica.conn().await?;
            Ok(TAKE
                .key(bucket)
                .arg(key.rpm)
                .invoke_async(&mut conn)
                .await?)
        })
        .await?;
    Ok((admitted == 0).then_some(retry_ms.max(0) as u64))
}
