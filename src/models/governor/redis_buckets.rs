//! Rate-limit buckets in Redis, shared by every kb replica that uses the same server.
//!
//! Each upstream has two buckets, `kb:bucket:<upstream>:rpm` and `kb:bucket:<upstream>:tpm`
//! (hashes `{level, at}`, `at` in Redis `TIME` milliseconds). They are only read and written by
//! two Lua scripts, which Redis runs atomically: [`TAKE`] refills both buckets by the time
//! elapsed on the server's clock and takes from both, or from neither and answers how long to
//! wait; [`ADJUST`] gives back or charges (after the real usage is known). Two replicas can
//! therefore never both take the last token. A key expires once its bucket would be full again
//! (a missing key is a full bucket), so idle upstreams leave nothing behind.
//!
//! The governor decides admission synchronously under its lock, so it cannot wait for Redis
//! there. [`RedisBuckets`] answers from a per-key *lease*: capacity already taken from Redis
//! for the next call here. When the lease does not cover a call, the store starts one `TAKE` of
//! the shortfall in the background and asks the governor to poll again in a millisecond; when
//! Redis answers "wait", it says so until then. A replica holds back at most one call's worth of
//! capacity (when a call smaller than the one the lease was taken for uses it).
//!
//! Redis unreachable (an error or no answer within [`OP_TIMEOUT`]): the call is decided by a
//! local in-memory bucket instead (fail open, but still limited per replica), a warning is
//! logged (at most every 10 s) and `kb_rate_limit_redis_fallbacks_total` counts it. After a
//! failure Redis is not asked again for [`RETRY_AFTER_FAILURE`], so an outage does not add a
//! timeout to every call.

use super::{BucketStore, LocalBuckets};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Longest a bucket script may take before Redis counts as unreachable for the call.
pub const OP_TIMEOUT: Duration = Duration::from_millis(500);
/// After a failure, the local buckets decide for this long before Redis is tried again.
pub const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(1);
/// How soon the governor polls again while a `TAKE` is on its way.
const POLL: Duration = Duration::from_millis(1);

/// KEYS: the request and token buckets. ARGV: rpm, tpm, requests, tokens (0 = no limit / none).
/// Returns `{1, 0}` when both were taken, else `{0, ms to wait}` and nothing is taken. A take
/// larger than a whole bucket waits for a full bucket, then goes through (into debt).
pub const TAKE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local caps = {tonumber(ARGV[1]), tonumber(ARGV[2])}
local ns = {tonumber(ARGV[3]), tonumber(ARGV[4])}
local levels = {}
local wait = 0
for i = 1, 2 do
  if caps[i] > 0 and ns[i] > 0 then
    local v = redis.call('HMGET', KEYS[i], 'level', 'at')
    local level = caps[i]
    if v[1] then
      local dt = math.max(0, now - tonumber(v[2]))
      level = math.min(caps[i], tonumber(v[1]) + dt * caps[i] / 60000)
    end
    levels[i] = level
    local need = math.min(ns[i], caps[i])
    if level < need then
      wait = math.max(wait, math.ceil((need - level) * 60000 / caps[i]))
    end
  end
end
if wait > 0 then
  return {0, wait}
end
for i = 1, 2 do
  if levels[i] then
    local level = levels[i] - ns[i]
    redis.call('HSET', KEYS[i], 'level', tostring(level), 'at', tostring(now))
    redis.call('PEXPIRE', KEYS[i], math.ceil((caps[i] - level) * 60000 / caps[i]) + 1000)
  end
end
return {1, 0}
"#;

/// KEYS and ARGV as [`TAKE`], with signed amounts: positive gives back (up to a full bucket),
/// negative charges (a bucket may go into debt).
pub const ADJUST: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local caps = {tonumber(ARGV[1]), tonumber(ARGV[2])}
local ns = {tonumber(ARGV[3]), tonumber(ARGV[4])}
for i = 1, 2 do
  if caps[i] > 0 and ns[i] ~= 0 then
    local v = redis.call('HMGET', KEYS[i], 'level', 'at')
    local level = caps[i]
    if v[1] then
      local dt = math.max(0, now - tonumber(v[2]))
      level = math.min(caps[i], tonumber(v[1]) + dt * caps[i] / 60000)
    end
    level = math.min(caps[i], level + ns[i])
    redis.call('HSET', KEYS[i], 'level', tostring(level), 'at', tostring(now))
    redis.call('PEXPIRE', KEYS[i], math.ceil((caps[i] - level) * 60000 / caps[i]) + 1000)
  end
end
return 1
"#;

/// The Redis keys of upstream `key`'s request and token buckets.
pub fn bucket_keys(key: &str) -> (String, String) {
    (
        format!("kb:bucket:{key}:rpm"),
        format!("kb:bucket:{key}:tpm"),
    )
}

#[derive(Default)]
struct Lease {
    /// Taken from Redis for calls here, not handed out yet.
    requests: u64,
    tokens: u64,
    /// A `TAKE` is on its way.
    fetching: bool,
    /// Redis said the shortfall cannot be taken before then.
    not_before: Option<Instant>,
}

struct Inner {
    conn: redis::aio::ConnectionManager,
    take: redis::Script,
    adjust: redis::Script,
    local: LocalBuckets,
    leases: Mutex<HashMap<String, Lease>>,
    fallbacks: AtomicU64,
    /// Redis failed: the local buckets decide until then.
    down_until: Mutex<Option<Instant>>,
    last_warning: Mutex<Option<Instant>>,
}

/// Token buckets in Redis; see the module documentation.
#[derive(Clone)]
pub struct RedisBuckets {
    inner: Arc<Inner>,
}

impl RedisBuckets {
    /// Connects now: an unreachable Redis is an error here (start-up), a fallback later.
    pub async fn connect(url: &str) -> anyhow::Result<RedisBuckets> {
        let conn = crate::redis_client::connect(url, Duration::from_secs(2), OP_TIMEOUT, 1).await?;
        Ok(RedisBuckets {
            inner: Arc::new(Inner {
                conn,
                take: redis::Script::new(TAKE),
                adjust: redis::Script::new(ADJUST),
                local: LocalBuckets::default(),
                leases: Mutex::new(HashMap::new()),
                fallbacks: AtomicU64::new(0),
                down_until: Mutex::new(None),
                last_warning: Mutex::new(None),
            }),
        })
    }

    /// One atomic `TAKE` in Redis: `Ok(Ok(()))` taken, `Ok(Err(wait))` not taken, `Err` Redis
    /// failed (or did not answer within [`OP_TIMEOUT`]).
    pub async fn take_shared(
        &self,
        key: &str,
        (rpm, tpm): (u32, u32),
        requests: u64,
        tokens: u64,
    ) -> anyhow::Result<std::result::Result<(), Duration>> {
        let (rk, tk) = bucket_keys(key);
        let mut conn = self.inner.conn.clone();
        let mut inv = self.inner.take.key(rk);
        inv.key(tk).arg(rpm).arg(tpm).arg(requests).arg(tokens);
        let (ok, wait_ms): (i64, i64) =
            tokio::time::timeout(OP_TIMEOUT, inv.invoke_async(&mut conn))
                .await
                .map_err(|_| anyhow::anyhow!("no answer from Redis within {OP_TIMEOUT:?}"))??;
        Ok(if ok == 1 {
            Ok(())
        } else {
            Err(Duration::from_millis(wait_ms.max(1) as u64))
        })
    }

    /// One atomic `ADJUST` in Redis (positive: give back, negative: charge).
    pub async fn adjust_shared(
        &self,
        key: &str,
        (rpm, tpm): (u32, u32),
        requests: i64,
        tokens: i64,
    ) -> anyhow::Result<()> {
        let (rk, tk) = bucket_keys(key);
        let mut conn = self.inner.conn.clone();
        let mut inv = self.inner.adjust.key(rk);
        inv.key(tk).arg(rpm).arg(tpm).arg(requests).arg(tokens);
        let _: i64 = tokio::time::timeout(OP_TIMEOUT, inv.invoke_async(&mut conn))
            .await
            .map_err(|_| anyhow::anyhow!("no answer from Redis within {OP_TIMEOUT:?}"))??;
        Ok(())
    }

    fn redis_down(&self, now: Instant) -> bool {
        self.inner
            .down_until
            .lock()
            .unwrap()
            .is_some_and(|t| t > now)
    }

    /// Redis failed for a call: count it, log (not more than every 10 s), and leave Redis
    /// alone for a moment.
    fn failed(&self, what: &str, e: &anyhow::Error) {
        let now = Instant::now();
        *self.inner.down_until.lock().unwrap() = Some(now + RETRY_AFTER_FAILURE);
        let mut last = self.inner.last_warning.lock().unwrap();
        if last.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(10)) {
            *last = Some(now);
            tracing::warn!(error = %e, op = what, "rate-limit buckets: Redis unreachable, using local buckets");
        }
    }

    fn fell_back(&self) {
        self.inner.fallbacks.fetch_add(1, Ordering::Relaxed);
    }

    /// Take the shortfall of `key`'s lease from Redis (or locally when Redis fails).
    async fn fetch(self, key: String, limits: (u32, u32), requests: u64, tokens: u64) {
        let r = self.take_shared(&key, limits, requests, tokens).await;
        let r = match r {
            Ok(r) => r,
            Err(e) => {
                self.failed("take", &e);
                self.fell_back();
                self.inner
                    .local
                    .take(&key, limits, requests, tokens, Instant::now())
            }
        };
        let mut leases = self.inner.leases.lock().unwrap();
        let l = leases.entry(key).or_default();
        l.fetching = false;
        match r {
            Ok(()) => {
                l.requests += requests;
                l.tokens += tokens;
            }
            Err(wait) => l.not_before = Some(Instant::now() + wait),
        }
    }
}

impl BucketStore for RedisBuckets {
    fn try_take(
        &self,
        key: &str,
        rpm: u32,
        tpm: u32,
        tokens: u64,
        now: Instant,
    ) -> std::result::Result<(), Duration> {
        if rpm == 0 && tpm == 0 {
            return Ok(());
        }
        let need_req = u64::from(rpm > 0);
        let need_tok = if tpm > 0 { tokens } else { 0 };
        let mut leases = self.inner.leases.lock().unwrap();
        let l = leases.entry(key.to_string()).or_default();
        if l.requests >= need_req && l.tokens >= need_tok {
            l.requests -= need_req;
            l.tokens -= need_tok;
            return Ok(());
        }
        if l.fetching {
            return Err(POLL);
        }
        if let Some(t) = l.not_before {
            if t > now {
                return Err(t - now);
            }
            l.not_before = None;
        }
        let (req, tok) = (
            need_req.saturating_sub(l.requests),
            need_tok.saturating_sub(l.tokens),
        );
        let rt = tokio::runtime::Handle::try_current();
        if self.redis_down(now) || rt.is_err() {
            // Decided here and now by the local bucket.
            self.fell_back();
            self.inner.local.take(key, (rpm, tpm), req, tok, now)?;
            l.requests = l.requests + req - need_req;
            l.tokens = l.tokens + tok - need_tok;
            return Ok(());
        }
        l.fetching = true;
        drop(leases);
        let fut = self.clone().fetch(key.to_string(), (rpm, tpm), req, tok);
        rt.unwrap().spawn(fut);
        Err(POLL)
    }

    fn give_back(&self, key: &str, rpm: u32, tpm: u32, requests: i64, tokens: i64, now: Instant) {
        let requests = if rpm > 0 { requests } else { 0 };
        let tokens = if tpm > 0 { tokens } else { 0 };
        if requests == 0 && tokens == 0 {
            return;
        }
        let rt = tokio::runtime::Handle::try_current();
        if self.redis_down(now) || rt.is_err() {
            self.fell_back();
            self.inner
                .local
                .give_back(key, rpm, tpm, requests, tokens, now);
            return;
        }
        let this = self.clone();
        let key = key.to_string();
        rt.unwrap().spawn(async move {
            if let Err(e) = this.adjust_shared(&key, (rpm, tpm), requests, tokens).await {
                this.failed("adjust", &e);
                this.fell_back();
                this.inner
                    .local
                    .give_back(&key, rpm, tpm, requests, tokens, Instant::now());
            }
        });
    }

    fn fallbacks(&self) -> Option<u64> {
        Some(self.inner.fallbacks.load(Ordering::Relaxed))
    }
}
