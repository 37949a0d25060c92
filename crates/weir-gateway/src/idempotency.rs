//! Idempotency keys (draft-ietf-httpapi-idempotency-key-header), in an embedded database.
//!
//! A POST with `Idempotency-Key` on a route that enables it: the first request runs; a
//! duplicate while it runs gets 409 with Retry-After; a duplicate after it finished gets
//! the stored status, headers and body with `Idempotent-Replayed: true`; the same key with
//! a different request (method, path or body) gets 422. Keys are scoped per API key and
//! forgotten after the TTL (24 h by default).
//!
//! Records live in a `redb` file by default, so they survive a restart, or in Redis
//! ([`Idempotency::redis`]) so that every gateway instance sees the same keys. What is
//! stored: any upstream response except 5xx and 429, which leave the key free so the
//! client's retry runs again. Requests refused before they run (validation, limits) store
//! nothing.

use redb::{Database, ReadableTable, TableDefinition};
use sha2::{Digest, Sha256};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const RECORDS: TableDefinition<&str, &[u8]> = TableDefinition::new("idempotency");

/// An idempotency-store error (the gateway answers 503 and lets the request not run).
#[derive(Debug, thiserror::Error)]
#[error("idempotency store: {0}")]
pub struct IdempotencyError(String);

impl IdempotencyError {
    pub(crate) fn from_join() -> IdempotencyError {
        IdempotencyError("the idempotency store task failed".to_owned())
    }
}

fn e(x: impl std::fmt::Display) -> IdempotencyError {
    IdempotencyError(x.to_string())
}

/// A stored response.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StoredResponse {
    /// Status code.
    pub status: u16,
    /// Headers to replay (hop-by-hop and per-response ones excluded).
    pub headers: Vec<(String, String)>,
    /// Body.
    #[serde(skip)]
    pub body: Vec<u8>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Meta {
    fingerprint: String,
    created_ms: u64,
    done: Option<StoredResponse>,
}

/// What to do with a request that carries a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Begin {
    /// First time: run it (the key is now locked).
    Proceed,
    /// The same key is running.
    InProgress,
    /// Done before: replay this.
    Replay(StoredResponse),
    /// The key was used for a different request.
    Mismatch,
}

/// The store.
pub struct IdempotencyStore {
    db: Database,
    ttl: Duration,
    lock_timeout: Duration,
}

impl std::fmt::Debug for IdempotencyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdempotencyStore")
            .field("ttl", &self.ttl)
            .finish()
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The fingerprint of a request: method, path and query, body.
pub fn fingerprint(method: &str, path_and_query: &str, body: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(method.as_bytes());
    h.update([0]);
    h.update(path_and_query.as_bytes());
    h.update([0]);
    h.update(body);
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Checks an `Idempotency-Key` value: 1-255 visible ASCII characters. The draft sends it
/// as an sf-string (`"uuid"`); a bare value is accepted too.
pub fn parse_key(raw: &str) -> Option<&str> {
    let v = raw.trim();
    let v = v
        .strip_prefix('"')
        .and_then(|x| x.strip_suffix('"'))
        .unwrap_or(v);
    ((1..=255).contains(&v.len()) && v.bytes().all(|b| (0x21..0x7f).contains(&b))).then_some(v)
}

fn encode(meta: &Meta) -> Result<Vec<u8>, IdempotencyError> {
    let head = serde_json::to_vec(meta).map_err(e)?;
    let body = meta.done.as_ref().map_or(&[][..], |d| d.body.as_slice());
    let mut out = Vec::with_capacity(4 + head.len() + body.len());
    out.extend_from_slice(&u32::try_from(head.len()).map_err(e)?.to_be_bytes());
    out.extend_from_slice(&head);
    out.extend_from_slice(body);
    Ok(out)
}

fn decode(bytes: &[u8]) -> Option<Meta> {
    let len = usize::try_from(u32::from_be_bytes(bytes.get(..4)?.try_into().ok()?)).ok()?;
    let mut meta: Meta = serde_json::from_slice(bytes.get(4..4 + len)?).ok()?;
    if let Some(d) = meta.done.as_mut() {
        d.body = bytes.get(4 + len..)?.to_vec();
    }
    Some(meta)
}

impl IdempotencyStore {
    /// Opens (or creates) the database file.
    pub fn open(
        path: &Path,
        ttl: Duration,
        lock_timeout: Duration,
    ) -> Result<IdempotencyStore, IdempotencyError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(e)?;
        }
        let db = Database::create(path).map_err(e)?;
        let txn = db.begin_write().map_err(e)?;
        txn.open_table(RECORDS).map_err(e)?;
        txn.commit().map_err(e)?;
        let store = IdempotencyStore {
            db,
            ttl,
            lock_timeout,
        };
        store.purge_expired()?;
        Ok(store)
    }

    fn ttl_ms(&self) -> u64 {
        u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX)
    }

    /// Starts a request with `key` (already scoped to the caller).
    pub fn begin(&self, key: &str, fingerprint: &str) -> Result<Begin, IdempotencyError> {
        let now = now_ms();
        let txn = self.db.begin_write().map_err(e)?;
        let outcome = {
            let mut table = txn.open_table(RECORDS).map_err(e)?;
            let existing = table.get(key).map_err(e)?.and_then(|v| decode(v.value()));
            let live = existing.filter(|m| {
                let age = now.saturating_sub(m.created_ms);
                match m.done {
                    Some(_) => age < self.ttl_ms(),
                    None => age < u64::try_from(self.lock_timeout.as_millis()).unwrap_or(u64::MAX),
                }
            });
            match live {
                Some(m) if m.fingerprint != fingerprint => Begin::Mismatch,
                Some(Meta { done: Some(r), .. }) => Begin::Replay(r),
                Some(_) => Begin::InProgress,
                None => {
                    let meta = Meta {
                        fingerprint: fingerprint.to_owned(),
                        created_ms: now,
                        done: None,
                    };
                    table.insert(key, encode(&meta)?.as_slice()).map_err(e)?;
                    Begin::Proceed
                }
            }
        };
        txn.commit().map_err(e)?;
        Ok(outcome)
    }

    /// Stores the response of a request that ran.
    pub fn complete(
        &self,
        key: &str,
        fingerprint: &str,
        response: StoredResponse,
    ) -> Result<(), IdempotencyError> {
        let meta = Meta {
            fingerprint: fingerprint.to_owned(),
            created_ms: now_ms(),
            done: Some(response),
        };
        let txn = self.db.begin_write().map_err(e)?;
        {
            let mut table = txn.open_table(RECORDS).map_err(e)?;
            table.insert(key, encode(&meta)?.as_slice()).map_err(e)?;
        }
        txn.commit().map_err(e)
    }

    /// Frees a key whose request did not complete (so a retry runs again).
    pub fn abandon(&self, key: &str) -> Result<(), IdempotencyError> {
        let txn = self.db.begin_write().map_err(e)?;
        {
            let mut table = txn.open_table(RECORDS).map_err(e)?;
            table.remove(key).map_err(e)?;
        }
        txn.commit().map_err(e)
    }

    /// Deletes expired records; returns how many.
    pub fn purge_expired(&self) -> Result<usize, IdempotencyError> {
        let now = now_ms();
        let txn = self.db.begin_write().map_err(e)?;
        let n = {
            let mut table = txn.open_table(RECORDS).map_err(e)?;
            let mut dead = Vec::new();
            for item in table.iter().map_err(e)? {
                let (k, v) = item.map_err(e)?;
                let expired = decode(v.value())
                    .is_none_or(|m| now.saturating_sub(m.created_ms) >= self.ttl_ms());
                if expired {
                    dead.push(k.value().to_owned());
                }
            }
            for k in &dead {
                table.remove(k.as_str()).map_err(e)?;
            }
            dead.len()
        };
        txn.commit().map_err(e)?;
        Ok(n)
    }
}

/// The idempotency store the gateway uses: embedded (`redb`) or Redis.
pub enum Idempotency {
    /// The embedded database (blocking calls run on tokio's blocking pool).
    Embedded(std::sync::Arc<IdempotencyStore>),
    /// Redis: records are keys with a TTL; the first request's lock is `SET NX PX`.
    Redis {
        /// The connection.
        conn: redis::aio::ConnectionManager,
        /// Key prefix.
        prefix: String,
        /// Record lifetime.
        ttl: Duration,
        /// In-progress lock lifetime.
        lock_timeout: Duration,
    },
}

impl std::fmt::Debug for Idempotency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Idempotency::Embedded(_) => "Idempotency::Embedded",
            Idempotency::Redis { .. } => "Idempotency::Redis",
        })
    }
}

const REDIS_BEGIN: &str = r"
-- KEYS[1] the record; ARGV[1] 'P' .. fingerprint; ARGV[2] lock TTL in ms.
-- Returns false after locking a fresh key, else the stored value.
local v = redis.call('GET', KEYS[1])
if v then return v end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return false
";

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

impl Idempotency {
    /// Connects to Redis for idempotency records.
    pub async fn redis(
        url: &str,
        prefix: &str,
        ttl: Duration,
        lock_timeout: Duration,
    ) -> Result<Idempotency, IdempotencyError> {
        let client = redis::Client::open(url).map_err(e)?;
        let conn = redis::aio::ConnectionManager::new(client)
            .await
            .map_err(e)?;
        Ok(Idempotency::Redis {
            conn,
            prefix: format!("{prefix}:idem:"),
            ttl,
            lock_timeout,
        })
    }

    /// See [`IdempotencyStore::begin`].
    pub async fn begin(&self, key: &str, fp: &str) -> Result<Begin, IdempotencyError> {
        match self {
            Idempotency::Embedded(s) => {
                let (s, k, f) = (s.clone(), key.to_owned(), fp.to_owned());
                tokio::task::spawn_blocking(move || s.begin(&k, &f))
                    .await
                    .map_err(|_| IdempotencyError::from_join())?
            }
            Idempotency::Redis {
                conn,
                prefix,
                lock_timeout,
                ..
            } => {
                let mut c = conn.clone();
                let script = redis::Script::new(REDIS_BEGIN);
                let stored: Option<Vec<u8>> = script
                    .key(format!("{prefix}{key}"))
                    .arg(format!("P{fp}"))
                    .arg(ms(*lock_timeout))
                    .invoke_async(&mut c)
                    .await
                    .map_err(e)?;
                Ok(match stored {
                    None => Begin::Proceed,
                    Some(v) => match v.split_first() {
                        Some((b'P', f)) if f == fp.as_bytes() => Begin::InProgress,
                        Some((b'D', rest)) => match decode(rest) {
                            Some(meta) if meta.fingerprint == fp => {
                                meta.done.map_or(Begin::InProgress, Begin::Replay)
                            }
                            _ => Begin::Mismatch,
                        },
                        _ => Begin::Mismatch,
                    },
                })
            }
        }
    }

    /// See [`IdempotencyStore::complete`].
    pub async fn complete(
        &self,
        key: &str,
        fp: &str,
        response: StoredResponse,
    ) -> Result<(), IdempotencyError> {
        match self {
            Idempotency::Embedded(s) => {
                let (s, k, f) = (s.clone(), key.to_owned(), fp.to_owned());
                tokio::task::spawn_blocking(move || s.complete(&k, &f, response))
                    .await
                    .map_err(|_| IdempotencyError::from_join())?
            }
            Idempotency::Redis {
                conn, prefix, ttl, ..
            } => {
                let meta = Meta {
                    fingerprint: fp.to_owned(),
                    created_ms: now_ms(),
                    done: Some(response),
                };
                let mut value = vec![b'D'];
                value.extend(encode(&meta)?);
                let mut c = conn.clone();
                redis::cmd("SET")
                    .arg(format!("{prefix}{key}"))
                    .arg(value)
                    .arg("PX")
                    .arg(ms(*ttl))
                    .query_async::<()>(&mut c)
                    .await
                    .map_err(e)
            }
        }
    }

    /// See [`IdempotencyStore::abandon`].
    pub async fn abandon(&self, key: &str) -> Result<(), IdempotencyError> {
        match self {
            Idempotency::Embedded(s) => {
                let (s, k) = (s.clone(), key.to_owned());
                tokio::task::spawn_blocking(move || s.abandon(&k))
                    .await
                    .map_err(|_| IdempotencyError::from_join())?
            }
            Idempotency::Redis { conn, prefix, .. } => {
                let mut c = conn.clone();
                redis::cmd("DEL")
                    .arg(format!("{prefix}{key}"))
                    .query_async::<()>(&mut c)
                    .await
                    .map_err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(name: &str, ttl: Duration) -> IdempotencyStore {
        let path =
            std::env::temp_dir().join(format!("weir-idem-{}-{name}.redb", std::process::id()));
        let _ = std::fs::remove_file(&path);
        IdempotencyStore::open(&path, ttl, Duration::from_secs(60)).expect("open")
    }

    #[test]
    fn lifecycle() {
        let s = store("life", Duration::from_secs(3600));
        assert_eq!(s.begin("k1\u{1f}a", "fp").expect("db"), Begin::Proceed);
        assert_eq!(s.begin("k1\u{1f}a", "fp").expect("db"), Begin::InProgress);
        assert_eq!(s.begin("k1\u{1f}a", "other").expect("db"), Begin::Mismatch);
        let r = StoredResponse {
            status: 201,
            headers: vec![("content-type".into(), "application/json".into())],
            body: b"{\"id\":1}".to_vec(),
        };
        s.complete("k1\u{1f}a", "fp", r.clone()).expect("db");
        assert_eq!(s.begin("k1\u{1f}a", "fp").expect("db"), Begin::Replay(r));
        assert_eq!(
            s.begin("k2\u{1f}a", "fp").expect("db"),
            Begin::Proceed,
            "scoped per API key"
        );
        s.abandon("k2\u{1f}a").expect("db");
        assert_eq!(s.begin("k2\u{1f}a", "fp").expect("db"), Begin::Proceed);
    }

    #[test]
    fn expired_records_are_forgotten() {
        let s = store("ttl", Duration::ZERO);
        s.complete(
            "k",
            "fp",
            StoredResponse {
                status: 200,
                headers: vec![],
                body: vec![],
            },
        )
        .expect("db");
        assert_eq!(s.begin("k", "fp").expect("db"), Begin::Proceed);
    }

    #[test]
    fn key_syntax() {
        assert_eq!(
            parse_key("\"8e03978e-40d5-43e8-bc93-6894a57f9324\""),
            Some("8e03978e-40d5-43e8-bc93-6894a57f9324")
        );
        assert_eq!(parse_key("abc"), Some("abc"));
        assert_eq!(parse_key(""), None);
        assert_eq!(parse_key(&"a".repeat(256)), None);
        assert_eq!(parse_key("a\u{7}b"), None);
    }
}
