//! The in-memory store: weir's embedded default.
//!
//! * **Sharded, no global lock.** Keys hash to one of a power-of-two number of shards, each
//!   a `RwLock` over a hash table. Deciding only ever takes shard locks *shared*; the
//!   counters themselves are `AtomicU64`s, updated by compare-and-swap (as governor does).
//!   An exclusive shard lock is taken only to insert a new key or sweep idle ones.
//! * **All-or-nothing across keys.** A multi-limit decision takes the shard read locks in
//!   shard order, then *claims* each counter by setting its top bit (in address order, so
//!   two decisions never wait on each other in a cycle), evaluates every item, and writes
//!   all new values or none. Single-item decisions skip the claim and CAS directly.
//! * **Bounded memory.** An idle key (TAT in the past, or nothing in flight) is exactly
//!   equivalent to an absent one, so sweeping it changes no decision. Each shard sweeps
//!   when it has doubled since its last sweep. A hard cap on tracked keys (default
//!   1,000,000) protects the process: at the cap, after a full sweep, a *new* key is
//!   refused with [`StoreErrorKind::Capacity`] (the gateway answers 503) while existing keys
//!   keep working. Weir never evicts a live key, because that would silently over-admit.

use super::{CheckItem, Op, Store, StoreDecision, StoreError, StoreErrorKind};
use crate::clock::Nanos;
use hashbrown::hash_table::{Entry as TableEntry, HashTable};
use hashbrown::DefaultHashBuilder;
use parking_lot::RwLock;
use smallvec::SmallVec;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// The claim bit of a counter (values never reach 2^63: that is the year 2262 in ns).
const CLAIMED: u64 = 1 << 63;

/// The default cap on tracked keys.
pub const DEFAULT_MAX_KEYS: usize = 1_000_000;

/// Keys up to this many bytes (`limit` + separator + `scope`) live inside the slot, so a
/// lookup touches one cache line instead of chasing two heap strings.
const INLINE_KEY: usize = 38;

/// `limit \x1f scope`, inline when short.
enum Key {
    Inline { len: u8, bytes: [u8; INLINE_KEY] },
    Heap(Box<[u8]>),
}

impl Key {
    fn new(limit: &str, scope: &str) -> Key {
        let len = limit.len() + 1 + scope.len();
        if len <= INLINE_KEY {
            let mut bytes = [0u8; INLINE_KEY];
            bytes[..limit.len()].copy_from_slice(limit.as_bytes());
            bytes[limit.len()] = 0x1f;
            bytes[limit.len() + 1..len].copy_from_slice(scope.as_bytes());
            Key::Inline {
                len: len as u8,
                bytes,
            }
        } else {
            let mut v = Vec::with_capacity(len);
            v.extend_from_slice(limit.as_bytes());
            v.push(0x1f);
            v.extend_from_slice(scope.as_bytes());
            Key::Heap(v.into_boxed_slice())
        }
    }

    fn bytes(&self) -> &[u8] {
        match self {
            Key::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Key::Heap(b) => b,
        }
    }

    /// Whether this is `limit \x1f scope` (limit names never contain the separator).
    #[inline]
    fn is(&self, limit: &str, scope: &str) -> bool {
        let b = self.bytes();
        b.len() == limit.len() + 1 + scope.len()
            && b.get(..limit.len()) == Some(limit.as_bytes())
            && b.get(limit.len()) == Some(&0x1f)
            && b.get(limit.len() + 1..) == Some(scope.as_bytes())
    }
}

struct Slot {
    hash: u64,
    value: AtomicU64,
    is_rate: bool,
    key: Key,
}

struct ShardInner {
    table: HashTable<Slot>,
    next_sweep: usize,
}

/// One shard, on cache lines of its own: shards are read-locked on every decision, and two
/// cores touching neighbouring shards must not bounce a shared line (false sharing).
#[repr(align(128))]
struct Shard(RwLock<ShardInner>);

/// The in-memory store.
pub struct MemoryStore {
    shards: Box<[Shard]>,
    mask: usize,
    hasher: DefaultHashBuilder,
    max_keys: usize,
    keys: AtomicUsize,
    inserted: AtomicU64,
    swept: AtomicU64,
}

/// Counters for metrics: how many keys the store has created and forgotten.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MemoryStats {
    /// Keys tracked now.
    pub keys: usize,
    /// Keys created since start.
    pub inserted: u64,
    /// Idle keys swept since start.
    pub swept: u64,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("shards", &self.shards.len())
            .field("keys", &self.len())
            .field("max_keys", &self.max_keys)
            .finish()
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore::new(DEFAULT_MAX_KEYS)
    }
}

const MIN_SWEEP: usize = 256;

impl MemoryStore {
    /// A store tracking at most `max_keys` keys, with 4 shards per available core
    /// (at least 16).
    pub fn new(max_keys: usize) -> MemoryStore {
        let cores = std::thread::available_parallelism().map_or(4, |n| n.get());
        MemoryStore::with_shards(max_keys, (cores * 4).max(16))
    }

    /// A store with an explicit shard count (rounded up to a power of two).
    pub fn with_shards(max_keys: usize, shards: usize) -> MemoryStore {
        let n = shards.clamp(1, 1 << 16).next_power_of_two();
        MemoryStore {
            shards: (0..n)
                .map(|_| {
                    Shard(RwLock::new(ShardInner {
                        table: HashTable::new(),
                        next_sweep: MIN_SWEEP,
                    }))
                })
                .collect(),
            mask: n - 1,
            hasher: DefaultHashBuilder::default(),
            max_keys: max_keys.max(1),
            keys: AtomicUsize::new(0),
            inserted: AtomicU64::new(0),
            swept: AtomicU64::new(0),
        }
    }

    /// Keys currently tracked.
    pub fn len(&self) -> usize {
        self.keys.load(Ordering::Relaxed)
    }

    /// Counters for metrics.
    pub fn stats(&self) -> MemoryStats {
        MemoryStats {
            keys: self.len(),
            inserted: self.inserted.load(Ordering::Relaxed),
            swept: self.swept.load(Ordering::Relaxed),
        }
    }

    /// Whether no key is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets every idle key; returns how many were dropped. Safe at any time: idle keys
    /// are indistinguishable from absent ones.
    pub fn sweep(&self, now: Nanos) -> usize {
        self.shards
            .iter()
            .map(|s| self.sweep_shard(&mut s.0.write(), now))
            .sum()
    }

    fn sweep_shard(&self, inner: &mut ShardInner, now: Nanos) -> usize {
        let before = inner.table.len();
        inner
            .table
            .retain(|s| !Op::is_idle(s.is_rate, s.value.load(Ordering::Acquire) & !CLAIMED, now));
        let dropped = before - inner.table.len();
        self.keys.fetch_sub(dropped, Ordering::Relaxed);
        self.swept.fetch_add(dropped as u64, Ordering::Relaxed);
        inner.next_sweep = (inner.table.len() * 2).max(MIN_SWEEP);
        dropped
    }

    #[inline]
    fn hash(&self, limit: &str, scope: &str) -> u64 {
        self.hasher.hash_one((limit, scope))
    }

    #[inline]
    fn shard_of(&self, hash: u64) -> usize {
        (hash >> 32) as usize & self.mask
    }

    /// Inserts the key unless present. Sweeps the shard when it has doubled, and the
    /// whole store before refusing a key at the cap.
    fn insert(&self, hash: u64, item: &CheckItem<'_>, now: Nanos) -> Result<(), StoreError> {
        let shard = &self.shards[self.shard_of(hash)];
        let mut inner = shard.0.write();
        if find(&inner.table, hash, item).is_some() {
            return Ok(());
        }
        if inner.table.len() >= inner.next_sweep {
            self.sweep_shard(&mut inner, now);
        }
        if self.keys.load(Ordering::Relaxed) >= self.max_keys {
            drop(inner);
            self.sweep(now);
            inner = shard.0.write();
            if self.keys.load(Ordering::Relaxed) >= self.max_keys {
                return Err(StoreError::new(
                    StoreErrorKind::Capacity,
                    format!(
                        "the in-memory limiter tracks its maximum of {} keys",
                        self.max_keys
                    ),
                ));
            }
            if find(&inner.table, hash, item).is_some() {
                return Ok(());
            }
        }
        if let TableEntry::Vacant(v) =
            inner
                .table
                .entry(hash, |s| matches(s, hash, item), |s| s.hash)
        {
            v.insert(Slot {
                hash,
                key: Key::new(item.limit, item.scope),
                is_rate: matches!(item.op, Op::Rate { .. }),
                value: AtomicU64::new(0),
            });
            self.keys.fetch_add(1, Ordering::Relaxed);
            self.inserted.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Decides synchronously (the memory store never waits on anything but its own locks).
    pub fn decide_now(
        &self,
        now: Nanos,
        items: &[CheckItem<'_>],
    ) -> Result<StoreDecision, StoreError> {
        match items {
            [] => Ok(StoreDecision {
                now,
                admitted: true,
                values: SmallVec::new(),
                lease: 0,
                degraded: false,
            }),
            [one] => self.decide_one(now, one),
            many => self.decide_many(now, many),
        }
    }

    fn decide_one(&self, now: Nanos, item: &CheckItem<'_>) -> Result<StoreDecision, StoreError> {
        let hash = self.hash(item.limit, item.scope);
        let shard = &self.shards[self.shard_of(hash)];
        loop {
            {
                let inner = shard.0.read();
                if let Some(slot) = find(&inner.table, hash, item) {
                    let (admitted, value) = cas_apply(&slot.value, &item.op, now);
                    let mut values = SmallVec::new();
                    values.push(value);
                    return Ok(StoreDecision {
                        now,
                        admitted,
                        values,
                        lease: 0,
                        degraded: false,
                    });
                }
            }
            // An absent key behaves as value 0; a rejection needs no key at all.
            if item.op.apply(0, now).is_none() {
                let mut values = SmallVec::new();
                values.push(0);
                return Ok(StoreDecision {
                    now,
                    admitted: false,
                    values,
                    lease: 0,
                    degraded: false,
                });
            }
            self.insert(hash, item, now)?;
        }
    }

    fn decide_many(
        &self,
        now: Nanos,
        items: &[CheckItem<'_>],
    ) -> Result<StoreDecision, StoreError> {
        let hashes: SmallVec<[u64; 4]> =
            items.iter().map(|i| self.hash(i.limit, i.scope)).collect();
        let mut shard_ids: SmallVec<[usize; 4]> =
            hashes.iter().map(|h| self.shard_of(*h)).collect();
        shard_ids.sort_unstable();
        shard_ids.dedup();
        loop {
            let guards: SmallVec<[_; 4]> =
                shard_ids.iter().map(|i| self.shards[*i].0.read()).collect();
            let mut slots: SmallVec<[Option<&Slot>; 4]> = SmallVec::with_capacity(items.len());
            for (item, hash) in items.iter().zip(&hashes) {
                let pos = shard_ids.binary_search(&self.shard_of(*hash)).unwrap_or(0);
                slots.push(find(&guards[pos].table, *hash, item));
            }
            if slots.iter().all(Option::is_some) {
                let slots: SmallVec<[&Slot; 4]> = slots.into_iter().flatten().collect();
                return Ok(decide_claimed(now, items, &slots));
            }
            // Some key is new: insert it (outside every read lock) and decide again.
            let missing: SmallVec<[usize; 4]> = slots
                .iter()
                .enumerate()
                .filter(|(_, s)| s.is_none())
                .map(|(i, _)| i)
                .collect();
            drop(slots);
            drop(guards);
            for i in missing {
                self.insert(hashes[i], &items[i], now)?;
            }
        }
    }
}

#[inline]
fn matches(slot: &Slot, hash: u64, item: &CheckItem<'_>) -> bool {
    slot.hash == hash && slot.key.is(item.limit, item.scope)
}

#[inline]
fn find<'t>(table: &'t HashTable<Slot>, hash: u64, item: &CheckItem<'_>) -> Option<&'t Slot> {
    table.find(hash, |s| matches(s, hash, item))
}

/// Waits out a claim held by a multi-key decision (held for nanoseconds).
#[inline]
fn backoff(spins: &mut u32) {
    *spins += 1;
    if *spins < 64 {
        std::hint::spin_loop();
    } else {
        std::thread::yield_now();
    }
}

/// The single-key path: compare-and-swap until it sticks. Returns (admitted, value).
#[inline]
fn cas_apply(cell: &AtomicU64, op: &Op, now: Nanos) -> (bool, u64) {
    let mut spins = 0;
    let mut current = cell.load(Ordering::Acquire);
    loop {
        if current & CLAIMED != 0 {
            backoff(&mut spins);
            current = cell.load(Ordering::Acquire);
            continue;
        }
        let Some(next) = op.apply(current, now) else {
            return (false, current);
        };
        match cell.compare_exchange_weak(current, next, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return (true, next),
            Err(actual) => current = actual,
        }
    }
}

fn claim(cell: &AtomicU64) -> u64 {
    let mut spins = 0;
    loop {
        let v = cell.load(Ordering::Acquire);
        if v & CLAIMED == 0
            && cell
                .compare_exchange_weak(v, v | CLAIMED, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            return v;
        }
        backoff(&mut spins);
    }
}

/// Claims every counter (in address order), evaluates, writes all or nothing.
fn decide_claimed(now: Nanos, items: &[CheckItem<'_>], slots: &[&Slot]) -> StoreDecision {
    let mut order: SmallVec<[usize; 4]> = (0..slots.len()).collect();
    order.sort_unstable_by_key(|i| std::ptr::from_ref(slots[*i]) as usize);
    let mut before: SmallVec<[u64; 4]> = SmallVec::from_elem(0, slots.len());
    let mut claimed: SmallVec<[usize; 4]> = SmallVec::new();
    for &i in &order {
        // The same counter twice in one decision is claimed once.
        if let Some(&first) = claimed.iter().find(|&&j| std::ptr::eq(slots[j], slots[i])) {
            before[i] = before[first];
            continue;
        }
        before[i] = claim(&slots[i].value);
        claimed.push(i);
    }
    // Evaluate in item order, threading values through repeated counters.
    let mut after = before.clone();
    let mut admitted = true;
    for i in 0..items.len() {
        let current = (0..i)
            .rev()
            .find(|&j| std::ptr::eq(slots[j], slots[i]))
            .map_or(before[i], |j| after[j]);
        match items[i].op.apply(current, now) {
            Some(v) => after[i] = v,
            None => {
                admitted = false;
                break;
            }
        }
    }
    let values = if admitted { after } else { before };
    // Release: write the final value of each distinct counter (the last item's for repeats).
    for &i in &claimed {
        let last = (0..items.len())
            .rev()
            .find(|&j| std::ptr::eq(slots[j], slots[i]))
            .unwrap_or(i);
        slots[i].value.store(values[last], Ordering::Release);
    }
    StoreDecision {
        now,
        admitted,
        values,
        lease: 0,
        degraded: false,
    }
}

impl Store for MemoryStore {
    fn decide<'a>(
        &'a self,
        now: Nanos,
        items: &'a [CheckItem<'a>],
    ) -> impl std::future::Future<Output = Result<StoreDecision, StoreError>> + Send + 'a {
        std::future::ready(self.decide_now(now, items))
    }

    fn release(&self, limit: &str, scope: &str, _first_scope: &str, _lease: u64) {
        let probe = CheckItem {
            limit,
            scope,
            op: Op::Acquire { max: 0 },
        };
        let hash = self.hash(limit, scope);
        let inner = self.shards[self.shard_of(hash)].0.read();
        if let Some(slot) = find(&inner.table, hash, &probe) {
            let mut spins = 0;
            let mut current = slot.value.load(Ordering::Acquire);
            loop {
                if current & CLAIMED != 0 {
                    backoff(&mut spins);
                    current = slot.value.load(Ordering::Acquire);
                    continue;
                }
                let next = current.saturating_sub(1);
                match slot.value.compare_exchange_weak(
                    current,
                    next,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    Ok(_) => return,
                    Err(actual) => current = actual,
                }
            }
        }
    }

    fn name(&self) -> &'static str {
        "memory"
    }
}
