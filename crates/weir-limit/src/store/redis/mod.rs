//! The Redis store: many gateway instances share one set of limits, exactly, in one
//! round-trip per decision.
//!
//! * **One round-trip.** A whole multi-limit decision (all limits, all-or-nothing, costs,
//!   concurrency leases) is one `EVALSHA` of `scripts/decide.lua`, loaded once and
//!   reloaded automatically on `NOSCRIPT`. The script is atomic on the server.
//! * **One clock.** In production ([`TimeSource::Server`]) the script reads Redis `TIME`,
//!   so instance clocks never matter. [`TimeSource::Caller`] uses the limiter's clock
//!   instead, which makes the shared store suite exact on a manual clock.
//! * **Multiplexed.** Every decision of an instance goes over one multiplexed connection
//!   (`ConnectionManager`, which also reconnects by itself; or a Cluster connection that
//!   follows the slot map). Never a connection per request.
//! * **Bounded waits.** Every call is bounded by [`RedisConfig::deadline`] (default 20 ms).
//!   Past it, or with Redis unreachable, [`FailurePolicy`] decides: fail closed (an
//!   `Unavailable` error: the gateway answers 503 `SERVICE_UNAVAILABLE` with Retry-After),
//!   or fail open to an in-memory store on which every quota is divided by the configured
//!   number of instances, so the fleet as a whole stays near the limit. Recovery needs no
//!   restart: the next call that reaches Redis uses it again.
//! * **Leases.** A concurrency slot is a member of a sorted set scored by its expiry; a
//!   slot whose holder died expires after [`RedisConfig::lease_ttl`].

pub mod keys;

use super::memory::MemoryStore;
use super::{CheckItem, Op, Store, StoreDecision, StoreError, StoreErrorKind};
use crate::clock::{Nanos, NANOS_PER_SEC};
use keys::HashTag;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Value;
use smallvec::SmallVec;
use std::num::NonZeroU64;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

const DECIDE_LUA: &str = include_str!("scripts/decide.lua");

/// Which clock the script uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TimeSource {
    /// Redis `TIME`: one clock for every instance (the default).
    #[default]
    Server,
    /// The limiter's clock, passed with each call (tests; exact replays).
    Caller,
}

/// What to do when Redis cannot answer within the deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FailurePolicy {
    /// Refuse: every decision fails with a transient `Unavailable`/`Timeout` error.
    #[default]
    FailClosed,
    /// Decide locally on an in-memory store with every quota divided by `instances`.
    FailOpen {
        /// How many gateway instances share the limits.
        instances: NonZeroU64,
    },
}

/// Where Redis is and how to use it.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisConfig {
    /// `redis://host:port/db` URLs: one for a single node, one or more seed nodes for Cluster.
    pub urls: Vec<String>,
    /// Whether `urls` are Cluster seed nodes.
    pub cluster: bool,
    /// Key prefix.
    pub prefix: String,
    /// Cluster hash-tag mode (see [`keys`]).
    pub hash_tag: HashTag,
    /// The longest any decision may wait for Redis.
    pub deadline: Duration,
    /// Which clock decides.
    pub time: TimeSource,
    /// How long a concurrency lease lives if never released.
    pub lease_ttl: Duration,
    /// What to do when Redis is unreachable or slow.
    pub on_failure: FailurePolicy,
}

impl std::fmt::Debug for RedisConfig {
    /// URLs may carry a password: they are never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConfig")
            .field("urls", &format_args!("[{} redacted]", self.urls.len()))
            .field("cluster", &self.cluster)
            .field("prefix", &self.prefix)
            .field("hash_tag", &self.hash_tag)
            .field("deadline", &self.deadline)
            .field("time", &self.time)
            .field("lease_ttl", &self.lease_ttl)
            .field("on_failure", &self.on_failure)
            .finish()
    }
}

impl RedisConfig {
    /// A single-node configuration with the defaults.
    pub fn single(url: impl Into<String>) -> RedisConfig {
        RedisConfig {
            urls: vec![url.into()],
            cluster: false,
            prefix: "weir".to_owned(),
            hash_tag: HashTag::default(),
            deadline: Duration::from_millis(20),
            time: TimeSource::Server,
            lease_ttl: Duration::from_secs(60),
            on_failure: FailurePolicy::FailClosed,
        }
    }

    /// A Cluster configuration from seed nodes, with the defaults.
    pub fn cluster(urls: Vec<String>) -> RedisConfig {
        RedisConfig {
            urls,
            cluster: true,
            ..RedisConfig::single("")
        }
    }
}

#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(redis::cluster_async::ClusterConnection),
}

/// The Redis store.
pub struct RedisStore {
    conn: Conn,
    script: redis::Script,
    config: RedisConfig,
    fallback: MemoryStore,
    lease_base: u64,
    leases: AtomicU64,
    runtime: tokio::runtime::Handle,
    calls: AtomicU64,
    degraded: AtomicU64,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("config", &self.config)
            .finish()
    }
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::new(StoreErrorKind::Unavailable, format!("redis: {e}"))
}

impl RedisStore {
    /// Connects (must run inside a tokio runtime). Fails if Redis cannot be reached now;
    /// once connected, outages are handled by the failure policy and reconnection.
    pub async fn connect(config: RedisConfig) -> Result<RedisStore, StoreError> {
        let connect_timeout = config.deadline.max(Duration::from_millis(500));
        let conn = if config.cluster {
            let client = redis::cluster::ClusterClient::builder(config.urls.clone())
                .response_timeout(config.deadline)
                .connection_timeout(connect_timeout)
                .retries(0)
                .build()
                .map_err(unavailable)?;
            Conn::Cluster(client.get_async_connection().await.map_err(unavailable)?)
        } else {
            let url = config
                .urls
                .first()
                .ok_or_else(|| unavailable("no URL configured"))?;
            let client = redis::Client::open(url.as_str()).map_err(unavailable)?;
            let cfg = ConnectionManagerConfig::new()
                .set_response_timeout(Some(config.deadline))
                .set_connection_timeout(Some(connect_timeout))
                .set_number_of_retries(1)
                .set_max_delay(Duration::from_millis(200));
            Conn::Single(
                ConnectionManager::new_with_config(client, cfg)
                    .await
                    .map_err(unavailable)?,
            )
        };
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos() as u64)
            ^ u64::from(std::process::id()).rotate_left(20);
        Ok(RedisStore {
            conn,
            script: redis::Script::new(DECIDE_LUA),
            fallback: MemoryStore::default(),
            lease_base: (seed & 0xffff_ffff) << 32,
            leases: AtomicU64::new(1),
            runtime: tokio::runtime::Handle::current(),
            calls: AtomicU64::new(0),
            degraded: AtomicU64::new(0),
            config,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &RedisConfig {
        &self.config
    }

    /// How many script calls were sent (for metrics and the one-round-trip test).
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// How many decisions were taken under the failure policy.
    pub fn degraded_decisions(&self) -> u64 {
        self.degraded.load(Ordering::Relaxed)
    }

    /// The SHA1 of the decision script (what `EVALSHA` calls).
    pub fn script_sha(&self) -> &str {
        self.script.get_hash()
    }

    /// The script source, for tools such as `redis-benchmark`.
    pub fn script_source() -> &'static str {
        DECIDE_LUA
    }

    /// The Redis key of one counter (for tools and tests).
    pub fn key_of(&self, limit: &str, scope: &str, first_scope: &str) -> String {
        keys::key(
            &self.config.prefix,
            keys::tag(&self.config.hash_tag, first_scope),
            limit,
            scope,
        )
    }

    async fn call(&self, now: Nanos, items: &[CheckItem<'_>]) -> Result<StoreDecision, StoreError> {
        let first_scope = items.first().map_or("", |i| i.scope);
        let tag = keys::tag(&self.config.hash_tag, first_scope);
        let mut inv = self.script.prepare_invoke();
        for item in items {
            inv.key(keys::key(&self.config.prefix, tag, item.limit, item.scope));
        }
        let clock = match self.config.time {
            TimeSource::Server => "server".to_owned(),
            TimeSource::Caller => format!("{}:{}", now / NANOS_PER_SEC, now % NANOS_PER_SEC),
        };
        let lease = self.lease_base | (self.leases.fetch_add(1, Ordering::Relaxed) & 0xffff_ffff);
        inv.arg(clock)
            .arg(lease)
            .arg(u64::try_from(self.config.lease_ttl.as_millis()).unwrap_or(u64::MAX));
        for item in items {
            match item.op {
                Op::Rate {
                    emission_ns,
                    capacity_ns,
                    cost,
                } => inv.arg("r").arg(emission_ns).arg(capacity_ns).arg(cost),
                Op::Acquire { max } => inv.arg("c").arg(max).arg(0).arg(0),
            };
        }
        self.calls.fetch_add(1, Ordering::Relaxed);
        let reply: Vec<Value> = match self.conn.clone() {
            Conn::Single(mut c) => inv.invoke_async(&mut c).await,
            Conn::Cluster(mut c) => inv.invoke_async(&mut c).await,
        }
        .map_err(|e| {
            let kind = if e.is_timeout() {
                StoreErrorKind::Timeout
            } else {
                StoreErrorKind::Unavailable
            };
            StoreError::new(kind, format!("redis: {e}"))
        })?;
        parse_reply(&reply, items.len(), lease)
    }

    fn fail_open(
        &self,
        now: Nanos,
        items: &[CheckItem<'_>],
        instances: NonZeroU64,
    ) -> Result<StoreDecision, StoreError> {
        let n = instances.get();
        let scaled: SmallVec<[CheckItem<'_>; 4]> = items
            .iter()
            .map(|i| CheckItem {
                op: match i.op {
                    Op::Rate {
                        emission_ns,
                        capacity_ns,
                        cost,
                    } => {
                        let count = (capacity_ns / emission_ns.max(1) / n).max(1);
                        let emission = capacity_ns.div_ceil(count);
                        Op::Rate {
                            emission_ns: emission,
                            capacity_ns: emission.saturating_mul(count),
                            cost,
                        }
                    }
                    Op::Acquire { max } => Op::Acquire {
                        max: (max / n).max(1),
                    },
                },
                ..*i
            })
            .collect();
        let mut d = self.fallback.decide_now(now, &scaled)?;
        d.degraded = true;
        d.lease = 0;
        Ok(d)
    }
}

fn int(v: &Value) -> Option<u64> {
    match v {
        Value::Int(i) => u64::try_from(*i).ok(),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}

fn parse_reply(reply: &[Value], n: usize, lease: u64) -> Result<StoreDecision, StoreError> {
    let bad = || {
        StoreError::new(
            StoreErrorKind::Unavailable,
            "redis: unexpected reply from the decision script",
        )
    };
    if reply.len() != n + 3 {
        return Err(bad());
    }
    let secs = int(&reply[0]).ok_or_else(bad)?;
    let nanos = int(&reply[1]).ok_or_else(bad)?;
    let admitted = int(&reply[2]).ok_or_else(bad)? == 1;
    let values = reply[3..]
        .iter()
        .map(int)
        .collect::<Option<SmallVec<[u64; 4]>>>()
        .ok_or_else(bad)?;
    Ok(StoreDecision {
        now: secs.saturating_mul(NANOS_PER_SEC).saturating_add(nanos),
        admitted,
        values,
        lease,
        degraded: false,
    })
}

impl Store for RedisStore {
    async fn decide<'a>(
        &'a self,
        now: Nanos,
        items: &'a [CheckItem<'a>],
    ) -> Result<StoreDecision, StoreError> {
        {
            if items.is_empty() {
                return self.fallback.decide_now(now, items);
            }
            let outcome =
                match tokio::time::timeout(self.config.deadline, self.call(now, items)).await {
                    Ok(r) => r,
                    Err(_) => Err(StoreError::new(
                        StoreErrorKind::Timeout,
                        format!("redis: no answer within {:?}", self.config.deadline),
                    )),
                };
            match (outcome, self.config.on_failure) {
                (Ok(d), _) => Ok(d),
                (Err(e), FailurePolicy::FailClosed) => Err(e),
                (Err(_), FailurePolicy::FailOpen { instances }) => {
                    self.degraded.fetch_add(1, Ordering::Relaxed);
                    self.fail_open(now, items, instances)
                }
            }
        }
    }

    fn release(&self, limit: &str, scope: &str, first_scope: &str, lease: u64) {
        if lease == 0 {
            // Taken while degraded: the slot lives in the fallback store.
            self.fallback.release(limit, scope, first_scope, lease);
            return;
        }
        let key = keys::key(
            &self.config.prefix,
            keys::tag(&self.config.hash_tag, first_scope),
            limit,
            scope,
        );
        let conn = self.conn.clone();
        let deadline = self.config.deadline;
        self.runtime.spawn(async move {
            let mut cmd = redis::cmd("ZREM");
            cmd.arg(key).arg(lease);
            // Best effort: if this is lost, the lease expires after its TTL.
            let _ = tokio::time::timeout(deadline.saturating_mul(10), async {
                match conn {
                    Conn::Single(mut c) => cmd.query_async::<i64>(&mut c).await,
                    Conn::Cluster(mut c) => cmd.query_async::<i64>(&mut c).await,
                }
            })
            .await;
        });
    }

    fn name(&self) -> &'static str {
        "redis"
    }
}
