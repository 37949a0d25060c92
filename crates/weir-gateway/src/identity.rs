//! Who is calling: API key → user → organisation → plan.
//!
//! Keys are stored only as SHA-256 hashes (`weir hash-key` prints one). A presented key is
//! hashed, the hash is looked up in a table keyed by the stored hashes, and the entry found
//! is compared with it in constant time. The lookup's timing depends only on the hash of
//! what the caller sent (and on the table's secret random hashing), never on the bytes of
//! a stored secret, so it tells an attacker nothing a guess would not. An earlier version
//! compared the presented hash with every stored one: as safe, but linear in the number of
//! keys (about 100 µs per request with 10,000 keys).
//!
//! A key's id — never the key — is what logs, metrics and limiter scopes see.

use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::time::SystemTime;
use subtle::ConstantTimeEq;

/// The SHA-256 of a key.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct KeyHash([u8; 32]);

impl std::hash::Hash for KeyHash {
    /// 8 bytes of the digest: a digest's bytes are already evenly spread (see
    /// [`DigestHasher`]).
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(u64::from_le_bytes(
            self.0[..8].try_into().unwrap_or_default(),
        ));
    }
}

impl std::fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyHash(…)")
    }
}

impl KeyHash {
    /// Equality in constant time, a 64-bit word at a time: `subtle`'s slice compare takes
    /// a byte at a time, each behind an optimisation barrier, 32 of them per request.
    fn ct_eq(&self, other: &KeyHash) -> subtle::Choice {
        let word = |b: &[u8]| u64::from_le_bytes(b.try_into().unwrap_or_default());
        self.0
            .chunks_exact(8)
            .zip(other.0.chunks_exact(8))
            .fold(subtle::Choice::from(1), |same, (a, b)| {
                same & word(a).ct_eq(&word(b))
            })
    }

    /// Hashes a clear-text key.
    pub fn of(key: &str) -> KeyHash {
        KeyHash(Sha256::digest(key.as_bytes()).into())
    }

    /// Parses `sha256:<64 hex digits>`.
    pub fn parse(s: &str) -> Option<KeyHash> {
        let hex = s.strip_prefix("sha256:")?;
        if hex.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, b) in out.iter_mut().enumerate() {
            *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(KeyHash(out))
    }

    /// The 32 bytes of the hash.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// `sha256:<hex>`.
    pub fn to_config_string(&self) -> String {
        let mut s = String::from("sha256:");
        for b in self.0 {
            s.push_str(&format!("{b:02x}"));
        }
        s
    }
}

/// One configured key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    /// Its id (safe to log).
    pub id: String,
    /// The hash of the secret.
    pub hash: KeyHash,
    /// The user it belongs to.
    pub user: String,
    /// The user's organisation.
    pub organisation: String,
    /// The organisation's plan.
    pub plan: String,
    /// Scopes it grants.
    pub scopes: Vec<String>,
    /// When it stops working.
    pub expires: Option<SystemTime>,
    /// What the upstream is told of this identity (by default `X-Weir-Key-Id`, `-User`,
    /// `-Organisation`, `-Plan`), written out once at load (see [`ApiKey::identity_headers`]).
    pub upstream_headers: crate::upstream::FieldLines,
}

impl ApiKey {
    /// The fields that tell the upstream who is calling, named as `names` says; a field
    /// `names` leaves out, or a value that cannot be a field value, is not sent.
    pub fn identity_headers(
        names: &IdentityHeaders,
        id: &str,
        user: &str,
        organisation: &str,
        plan: &str,
    ) -> crate::upstream::FieldLines {
        let mut lines = crate::upstream::FieldLines::new();
        for (name, value) in [
            (&names.key_id, id),
            (&names.user, user),
            (&names.organisation, organisation),
            (&names.plan, plan),
        ] {
            if let (Some(name), Ok(value)) = (name, http::HeaderValue::from_str(value)) {
                lines.push(name, &value);
            }
        }
        lines
    }
}

/// The names of the fields that carry a caller's identity upstream (`server.identity_headers`);
/// `None` leaves that part out.
///
/// Only weir may speak for the caller, so a client's own field of any of these names is
/// never forwarded, nor one starting with `x-weir-` (the default names' prefix, stripped
/// whatever the configuration, so that renaming a field cannot reopen a hole for
/// upstreams that still read the old name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityHeaders {
    /// The key's id (default `X-Weir-Key-Id`).
    pub key_id: Option<http::HeaderName>,
    /// The user (default `X-Weir-User`).
    pub user: Option<http::HeaderName>,
    /// The organisation (default `X-Weir-Organisation`).
    pub organisation: Option<http::HeaderName>,
    /// The plan (default `X-Weir-Plan`).
    pub plan: Option<http::HeaderName>,
    /// The configured names outside `x-weir-*`: the client's fields of these names are
    /// dropped on the way upstream (empty with the defaults, which costs nothing).
    strip: Vec<http::HeaderName>,
}

impl IdentityHeaders {
    /// The names given (`None`: that part is not sent).
    pub fn new(
        key_id: Option<http::HeaderName>,
        user: Option<http::HeaderName>,
        organisation: Option<http::HeaderName>,
        plan: Option<http::HeaderName>,
    ) -> IdentityHeaders {
        let strip = [&key_id, &user, &organisation, &plan]
            .into_iter()
            .flatten()
            .filter(|n| !n.as_str().starts_with("x-weir-"))
            .cloned()
            .collect();
        IdentityHeaders {
            key_id,
            user,
            organisation,
            plan,
            strip,
        }
    }

    /// Client fields that must not reach the upstream because weir writes fields of that
    /// name (beyond `x-weir-*`, which never do).
    pub fn strip(&self) -> &[http::HeaderName] {
        &self.strip
    }
}

impl Default for IdentityHeaders {
    fn default() -> Self {
        IdentityHeaders::new(
            Some(http::HeaderName::from_static("x-weir-key-id")),
            Some(http::HeaderName::from_static("x-weir-user")),
            Some(http::HeaderName::from_static("x-weir-organisation")),
            Some(http::HeaderName::from_static("x-weir-plan")),
        )
    }
}

/// Why a request has no identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// No key was presented.
    Missing,
    /// The key matches no configured key.
    Invalid,
    /// The key has expired.
    Expired,
}

/// The presented key: `Authorization: Bearer …` or `X-API-Key: …`.
pub fn presented_key(headers: &http::HeaderMap) -> Option<&str> {
    if let Some(v) = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        // A value `to_str` accepts is visible ASCII: ASCII trimming is all the trimming.
        let (scheme, rest) = v.trim_ascii().split_once(' ')?;
        if scheme.eq_ignore_ascii_case("bearer") {
            let k = rest.trim_ascii();
            return (!k.is_empty()).then_some(k);
        }
    }
    headers
        .get(crate::respond::names::X_API_KEY)
        .and_then(|v| v.to_str().ok())
        .map(str::trim_ascii)
        .filter(|k| !k.is_empty())
}

/// The configured keys by the hash of their secret (built once per configuration).
#[derive(Debug, Default)]
pub struct KeyIndex {
    by_hash: HashMap<KeyHash, usize, BuildHasherDefault<DigestHasher>>,
    /// Which index this is, different for every one built (0: none, the default), so a
    /// [`LastKey`] found in another configuration's keys is never taken for one of these.
    generation: u64,
}

/// The hasher of [`KeyIndex`]: a [`KeyHash`] hashes as 8 bytes of its digest, and this
/// hasher takes them as they are. They are as evenly spread as any hash of them would be,
/// and SipHash over the digest was a measurable part of every request. Flooding is not a
/// concern: the table holds only the configured keys, and a presented key costs one probe
/// whatever its digest.
#[derive(Default)]
pub struct DigestHasher(u64);

impl Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write_u64(&mut self, word: u64) {
        self.0 = word;
    }

    fn write(&mut self, bytes: &[u8]) {
        // Not used by `KeyHash`; anything else is mixed in (FNV-1a).
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

impl KeyIndex {
    /// Indexes `keys` (the configuration refuses two keys with one secret; were there any,
    /// the last would win).
    pub fn new(keys: &[ApiKey]) -> KeyIndex {
        static GENERATION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        KeyIndex {
            by_hash: keys.iter().enumerate().map(|(i, k)| (k.hash, i)).collect(),
            generation: GENERATION.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        }
    }

    /// The position in the keys of the key whose secret is `presented`.
    fn find(&self, keys: &[ApiKey], presented: &str) -> Option<usize> {
        let hash = KeyHash::of(presented);
        self.by_hash
            .get(&hash)
            .copied()
            // The table compared hashes with `==`; the final word is a constant-time compare.
            .filter(|&i| keys.get(i).is_some_and(|k| bool::from(k.hash.ct_eq(&hash))))
    }
}

/// The longest presented key a [`LastKey`] remembers; a longer one is hashed every time.
const LAST_KEY_BYTES: usize = 64;

/// The key a connection last presented, as presented, and where it was found.
///
/// A client sends the same key on every request of its connection. Finding it means its
/// SHA-256 and a lookup: a few hundred cycles with the CPU's SHA instructions, and about
/// 3,500 instructions on a CPU without them, on every request. Remembered per connection,
/// a repeated key costs a constant-time comparison with the one before and the expiry
/// check, which is never skipped. What the timing can tell a sender is only whether its key
/// is exactly the one presented before on the same connection (a key of another length is
/// told apart sooner), never how close it is. Only a key that was found is remembered, and only
/// for the configuration it was found in (a reload starts afresh). The bytes are those the
/// connection's own request buffer held; they are zeroed when the connection ends.
pub struct LastKey {
    generation: u64,
    index: usize,
    len: usize,
    bytes: [u8; LAST_KEY_BYTES],
}

impl Default for LastKey {
    fn default() -> Self {
        LastKey {
            generation: 0,
            index: 0,
            len: 0,
            bytes: [0; LAST_KEY_BYTES],
        }
    }
}

impl Drop for LastKey {
    fn drop(&mut self) {
        self.bytes.fill(0);
        // Kept from being optimised away as a write nothing reads.
        std::hint::black_box(&mut self.bytes);
    }
}

impl std::fmt::Debug for LastKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LastKey(…)")
    }
}

impl LastKey {
    /// Where `presented` was found last time, if it is the key remembered, in the keys
    /// `index` was built from.
    fn recall(&self, index: &KeyIndex, presented: &[u8]) -> Option<usize> {
        let same = self.generation != 0
            && self.generation == index.generation
            && self
                .bytes
                .get(..self.len)
                .is_some_and(|b| bool::from(b.ct_eq(presented)));
        same.then_some(self.index)
    }

    fn remember(&mut self, index: &KeyIndex, presented: &[u8], at: usize) {
        let Some(to) = self.bytes.get_mut(..presented.len()) else {
            return;
        };
        to.copy_from_slice(presented);
        self.len = presented.len();
        self.index = at;
        self.generation = index.generation;
    }
}

/// Finds the key for a presented secret among `keys` (indexed by `index`).
pub fn authenticate<'k>(
    keys: &'k [ApiKey],
    index: &KeyIndex,
    presented: Option<&str>,
    now: impl FnOnce() -> SystemTime,
) -> Result<&'k ApiKey, AuthFailure> {
    let presented = presented.ok_or(AuthFailure::Missing)?;
    let key = index
        .find(keys, presented)
        .and_then(|i| keys.get(i))
        .ok_or(AuthFailure::Invalid)?;
    unexpired(key, now)
}

/// [`authenticate`] for a connection's request: the key the connection presented last time
/// (see [`LastKey`]) is not looked up again.
pub fn authenticate_remembering<'k>(
    keys: &'k [ApiKey],
    index: &KeyIndex,
    presented: Option<&str>,
    last: &mut LastKey,
    now: impl FnOnce() -> SystemTime,
) -> Result<&'k ApiKey, AuthFailure> {
    let presented = presented.ok_or(AuthFailure::Missing)?;
    let at = match last.recall(index, presented.as_bytes()) {
        Some(at) => at,
        None => {
            let at = index.find(keys, presented).ok_or(AuthFailure::Invalid)?;
            last.remember(index, presented.as_bytes(), at);
            at
        }
    };
    unexpired(keys.get(at).ok_or(AuthFailure::Invalid)?, now)
}

/// `key`, unless it has expired.
fn unexpired(key: &ApiKey, now: impl FnOnce() -> SystemTime) -> Result<&ApiKey, AuthFailure> {
    match key.expires {
        // The clock is read only for a key that can expire.
        Some(t) if t <= now() => Err(AuthFailure::Expired),
        _ => Ok(key),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    proptest::proptest! {
        /// The word-wise constant-time compare says what `==` says, a difference in any
        /// byte included.
        #[test]
        fn constant_time_equality_is_equality(a in proptest::array::uniform32(0u8..), at in 0usize..32, flip in 1u8..) {
            let (x, y) = (KeyHash(a), KeyHash(a));
            proptest::prop_assert!(bool::from(x.ct_eq(&y)));
            let mut b = a;
            b[at] ^= flip;
            proptest::prop_assert!(!bool::from(x.ct_eq(&KeyHash(b))));
        }
    }

    fn key(id: &str, secret: &str, expires: Option<SystemTime>) -> ApiKey {
        ApiKey {
            id: id.into(),
            hash: KeyHash::of(secret),
            user: "u".into(),
            organisation: "o".into(),
            plan: "free".into(),
            scopes: vec![],
            expires,
            upstream_headers: ApiKey::identity_headers(
                &IdentityHeaders::default(),
                id,
                "u",
                "o",
                "free",
            ),
        }
    }

    #[test]
    fn hashes_round_trip_and_are_not_the_key() {
        let h = KeyHash::of("demo-free");
        let s = h.to_config_string();
        assert!(s.starts_with("sha256:") && !s.contains("demo-free"));
        assert_eq!(KeyHash::parse(&s), Some(h));
        assert_eq!(KeyHash::parse("sha256:zz"), None);
        assert!(
            !format!("{h:?}").contains(&s[7..]),
            "Debug never prints the hash"
        );
    }

    proptest::proptest! {
        /// A connection's requests find the key a fresh lookup finds, request after request,
        /// whatever it presents in turn, across reloads that reorder, drop or change keys,
        /// and as time passes a key's expiry (which is never remembered).
        #[test]
        fn a_remembered_key_is_the_key_a_lookup_finds(
            steps in proptest::collection::vec((0usize..6, proptest::bool::ANY, 0u64..3), 1..40),
        ) {
            const PRESENTED: [Option<&str>; 6] = [
                Some("secret-a"), Some("secret-b"), Some("secret-c"), Some("nope"), None,
                Some("secret-a-but-longer-than-any-key-a-connection-remembers-so-it-is-hashed-each-time"),
            ];
            // Two configurations: b expires at 1,001 s in the first and never in the second;
            // c exists only in the second; the order (so every index) differs.
            let configs = [
                vec![
                    key("a", "secret-a", None),
                    key("b", "secret-b", Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_001))),
                    key("long", PRESENTED[5].unwrap_or_default(), None),
                ],
                vec![
                    key("c", "secret-c", None),
                    key("long", PRESENTED[5].unwrap_or_default(), None),
                    key("b", "secret-b", None),
                    key("a", "secret-a", None),
                ],
            ];
            let mut which = 0;
            let mut index = KeyIndex::new(&configs[which]);
            let mut last = LastKey::default();
            let mut secs = 1_000;
            for (n, &(p, reload, later)) in steps.iter().enumerate() {
                if reload {
                    which = 1 - which;
                    index = KeyIndex::new(&configs[which]);
                }
                secs += later;
                let now = SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
                let keys = &configs[which];
                let fresh = authenticate(keys, &index, PRESENTED[p], || now).map(|k| &k.id);
                let kept = authenticate_remembering(keys, &index, PRESENTED[p], &mut last, || now)
                    .map(|k| &k.id);
                proptest::prop_assert_eq!(kept, fresh, "step {}", n);
            }
        }
    }

    #[test]
    fn authentication_outcomes() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let keys = [
            key("a", "secret-a", None),
            key("b", "secret-b", Some(SystemTime::UNIX_EPOCH)),
        ];
        let index = KeyIndex::new(&keys);
        assert_eq!(
            authenticate(&keys, &index, Some("secret-a"), || now).map(|k| k.id.as_str()),
            Ok("a")
        );
        assert_eq!(
            authenticate(&keys, &index, Some("nope"), || now),
            Err(AuthFailure::Invalid)
        );
        assert_eq!(
            authenticate(&keys, &index, None, || now),
            Err(AuthFailure::Missing)
        );
        assert_eq!(
            authenticate(&keys, &index, Some("secret-b"), || now),
            Err(AuthFailure::Expired)
        );
    }

    #[test]
    fn every_one_of_many_keys_is_found_and_nothing_else() {
        let keys: Vec<ApiKey> = (0..2_000)
            .map(|i| key(&format!("k{i}"), &format!("secret-{i}"), None))
            .collect();
        let index = KeyIndex::new(&keys);
        let now = SystemTime::now();
        for i in (0..2_000).step_by(7) {
            let found = authenticate(&keys, &index, Some(&format!("secret-{i}")), || now);
            assert_eq!(found.map(|k| k.id.clone()), Ok(format!("k{i}")));
        }
        for wrong in ["secret-2000", "secret-", "k1", "Secret-1", ""] {
            assert_eq!(
                authenticate(&keys, &index, Some(wrong), || now),
                Err(AuthFailure::Invalid),
                "{wrong:?}"
            );
        }
        // An index of other keys finds nothing here.
        let other = KeyIndex::new(&keys[..10]);
        assert_eq!(
            authenticate(&keys[10..], &other, Some("secret-3"), || now),
            Err(AuthFailure::Invalid)
        );
    }

    #[test]
    fn key_from_either_header() {
        let mut h = http::HeaderMap::new();
        h.insert("authorization", "Bearer abc".parse().expect("v"));
        assert_eq!(presented_key(&h), Some("abc"));
        let mut h = http::HeaderMap::new();
        h.insert("x-api-key", "xyz".parse().expect("v"));
        assert_eq!(presented_key(&h), Some("xyz"));
        let mut h = http::HeaderMap::new();
        h.insert("authorization", "Basic abc".parse().expect("v"));
        assert_eq!(presented_key(&h), None);
    }
}
