//! Per-key limits across replicas: requests per minute, tokens per minute and spend budgets,
//! each kept in Redis and taken atomically by a Lua script. The minute limits are the same
//! continuously refilling buckets as `crate::managed::limits`, on Redis's clock so replicas'
//! clocks need not agree; a budget is one counter per key and period (the period is read
//! from this replica's clock). Tokens and dollars are reserved from the estimate before the
//! upstream call and settled from the real usage afterwards, as locally.
//!
//! The callers are in `crate::track::admit`, which puts these and the local limiter
//! together. The local limiter still counts too (for the `x-ratelimit-*` headers, and as the
//! fallback): it never refuses what the shared one admits, since this replica's requests
//! are a part of the key's requests.
//!
//! Redis down or slow: the local limits alone apply (each replica then allows the whole
//! limit), counted in `deja_limits_local_fallback_total`.

use std::sync::atomic::Ordering;
use std::sync::{Arc, LazyLock};

use super::{Replica, ReplicaError};
use crate::config::KeyConfig;
use crate::error::refusal::Refusal;

/// How long an idle minute bucket is kept (a full refill takes a minute).
const BUCKET_TTL_MS: u64 = 120_000;
/// How long a budget counter outlives its period (late settlements land harmlessly).
const SPEND_GRACE_MS: u64 = 3_600_000;

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

/// Refill of a token bucket to Redis's now, shared by the reserve and settle scripts:
/// returns the units in use and the time (ms) of that figure.
const REFILL: &str = r#"
local function refill(key, cap)
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local used = tonumber(redis.call('HGET', key, 'u') or '0')
  local at = tonumber(redis.call('HGET', key, 't') or tostring(now))
  if now > at then
    used = math.max(0, used - cap * (now - at) / 60000)
    at = now
  end
  return used, at
end
"#;

/// KEYS[1]: the tokens bucket, KEYS[2]: the spend of this budget period. ARGV: tokens per
/// minute (0: none), tokens asked, budget ('' : none), dollars asked, the spend counter's
/// expiry (unix ms), the bucket's idle expiry (ms). Both limits are checked before either is
/// taken. Returns {0, 0} when reserved, {1, retry_ms} for tokens, {2, 0} for the budget.
static RESERVE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(&format!(
        r#"{REFILL}
local cap = tonumber(ARGV[1])
local tokens = tonumber(ARGV[2])
local used, at
if cap > 0 then
  used, at = refill(KEYS[1], cap)
  if tokens > cap or cap - used < tokens then
    return {{1, math.ceil((tokens - (cap - used)) / cap * 60000)}}
  end
end
if ARGV[3] ~= '' then
  local budget = tonumber(ARGV[3])
  local cost = tonumber(ARGV[4])
  local spent = tonumber(redis.call('GET', KEYS[2]) or '0')
  if spent + cost > budget or spent >= budget then
    return {{2, 0}}
  end
  redis.call('SET', KEYS[2], tostring(spent + cost), 'PXAT', ARGV[5])
end
if cap > 0 then
  redis.call('HSET', KEYS[1], 'u', tostring(used + tokens), 't', tostring(at))
  redis.call('PEXPIRE', KEYS[1], ARGV[6])
end
return {{0, 0}}
"#
    ))
});

/// KEYS as `RESERVE`. ARGV: tokens per minute (0: none), tokens to add (negative gives back
/// an estimate's excess), dollars to add (likewise), the bucket's idle expiry (ms). A spend
/// counter gone (its period ended) is left alone.
static SETTLE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(&format!(
        r#"{REFILL}
local cap = tonumber(ARGV[1])
local tokens = tonumber(ARGV[2])
if cap > 0 and tokens ~= 0 then
  local used, at = refill(KEYS[1], cap)
  redis.call('HSET', KEYS[1], 'u', tostring(math.max(0, used + tokens)), 't', tostring(at))
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
end
local cost = tonumber(ARGV[3])
if cost ~= 0 then
  local spent = redis.call('GET', KEYS[2])
  if spent then
    redis.call('SET', KEYS[2], tostring(math.max(0, tonumber(spent) + cost)), 'KEEPTTL')
  end
end
return 1
"#
    ))
});

/// Takes one request from the key's shared rpm bucket: `Ok(None)` when admitted,
/// `Ok(Some(retry_ms))` when refused. `Err` when Redis is away or failed (counted in
/// `deja_limits_local_fallback_total`): the local limits alone apply.
pub async fn take(replica: &Replica, key: &KeyConfig) -> Result<Option<u64>, ReplicaError> {
    fell_back(replica, shared(replica, take_shared(replica, key)).await)
}

/// Sets aside a call's tokens and dollars in Redis, against the budget period
/// `window_start_ms..period_end_ms`. `Err` as for `take`.
pub async fn reserve(
    replica: &Replica,
    key: &KeyConfig,
    tokens: u64,
    cost_usd: f64,
    now_ms: u64,
    window_start_ms: u64,
    period_end_ms: u64,
) -> Result<Result<(), Refusal>, ReplicaError> {
    let reserved = reserve_shared(
        replica,
        key,
        tokens,
        cost_usd,
        now_ms,
        window_start_ms,
        period_end_ms,
    );
    fell_back(replica, shared(replica, reserved).await)
}

/// Corrects a shared reservation by what the call really used, off the caller's path (on
/// the current Tokio runtime; without one, nothing is sent). A settlement Redis misses
/// leaves the estimate counted there until the bucket refills or the period ends.
pub fn settle(
    replica: &Arc<Replica>,
    key: &KeyConfig,
    window_start_ms: u64,
    token_delta: i64,
    cost_delta: f64,
) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let (replica, key) = (replica.clone(), key.clone());
    runtime.spawn(async move {
        let settled = settle_shared(&replica, &key, window_start_ms, token_delta, cost_delta);
        if let Err(err) = settled.await {
            tracing::debug!(error = %err, key = %key.id, "settling in redis failed; its estimate stays counted there");
        }
    });
}

/// Counts a shared check that failed: the local limits alone decide this request.
fn fell_back<T>(replica: &Replica, result: Result<T, ReplicaError>) -> Result<T, ReplicaError> {
    if result.is_err() {
        replica.stats.local_limits.fetch_add(1, Ordering::Relaxed);
    }
    result
}

/// Runs a shared check unless Redis is known to be away (then no request waits for it: the
/// log follower notices when it is back).
async fn shared<T>(
    replica: &Replica,
    check: impl std::future::Future<Output = Result<T, ReplicaError>>,
) -> Result<T, ReplicaError> {
    if replica.redis_up() {
        check.await
    } else {
        Err(ReplicaError::Timeout)
    }
}

/// `None` when admitted, else the milliseconds until a request would be.
async fn take_shared(replica: &Replica, key: &KeyConfig) -> Result<Option<u64>, ReplicaError> {
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

/// The tokens bucket and the spend counter of `key` for the budget period starting at
/// `window_start_ms`.
fn limit_keys(replica: &Replica, key: &KeyConfig, window_start_ms: u64) -> [String; 2] {
    [
        replica.key(&format!("tpm:{}", key.id)),
        replica.key(&format!("spend:{}:{window_start_ms}", key.id)),
    ]
}

async fn reserve_shared(
    replica: &Replica,
    key: &KeyConfig,
    tokens: u64,
    cost_usd: f64,
    now_ms: u64,
    window_start_ms: u64,
    period_end: u64,
) -> Result<Result<(), Refusal>, ReplicaError> {
    let [bucket, spend] = limit_keys(replica, key, window_start_ms);
    let budget = key.budget_usd.map_or(String::new(), |b| b.to_string());
    let (code, retry_ms): (i64, i64) = replica
        .call(replica.timeout(), async {
            let mut conn = replica.conn().await?;
            Ok(RESERVE
                .key(bucket)
                .key(spend)
                .arg(key.tpm)
                .arg(tokens)
                .arg(budget)
                .arg(cost_usd.to_string())
                .arg(period_end + SPEND_GRACE_MS)
                .arg(BUCKET_TTL_MS)
                .invoke_async(&mut conn)
                .await?)
        })
        .await?;
    Ok(match code {
        1 => Err(Refusal::Tokens {
            limit: key.tpm,
            requested: tokens,
            retry_ms: retry_ms.max(0) as u64,
        }),
        2 => Err(Refusal::Budget {
            budget_usd: key.budget_usd.unwrap_or(0.0),
            retry_ms: period_end.saturating_sub(now_ms),
        }),
        _ => Ok(()),
    })
}

async fn settle_shared(
    replica: &Replica,
    key: &KeyConfig,
    window_start_ms: u64,
    tokens: i64,
    cost_usd: f64,
) -> Result<(), ReplicaError> {
    let [bucket, spend] = limit_keys(replica, key, window_start_ms);
    replica
        .call(replica.timeout(), async {
            let mut conn = replica.conn().await?;
            Ok(SETTLE
                .key(bucket)
                .key(spend)
                .arg(key.tpm)
                .arg(tokens)
                .arg(cost_usd.to_string())
                .arg(BUCKET_TTL_MS)
                .invoke_async::<i64>(&mut conn)
                .await?)
        })
        .await?;
    Ok(())
}
