//! The in-memory store: weir's embedded default.
//!
//! * **Sharded, no global lock.** Keys hash to one of a power-of-two number of shards, each
//!   a hash table under a reader-sharded lock (crossbeam's `ShardedLock`): a reader locks
//!   only its own thread's slice of the lock, so readers on different cores never write
//!   the same cache line. Deciding only ever takes shard locks *shared*; the counters
//!   themselves are `AtomicU64`s, updated by compare-and-swap (as governor does). An
//!   exclusive lock (every slice) is taken only to insert a new key or sweep idle ones.
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

use super::{AsCheckItem, CheckItem, Op, Store, StoreDecision, StoreError, StoreErrorKind};
use crate::clock::Nanos;
use crossbeam_utils::sync::{ShardedLock, ShardedLockReadGuard, ShardedLockWriteGuard};
use hashbrown::hash_table::{Entry as TableEntry, HashTable};
use hashbrown::DefaultHashBuilder;
use smallvec::SmallVec;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::PoisonError;

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

/// One counter, on exactly one cache line (64 bytes, aligned): a lookup that misses the
/// cache costs one line for the control bytes and one for the slot, key included.
#[repr(align(64))]
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
struct Shard(ShardedLock<ShardInner>);

impl Shard {
    /// Shared access. A poisoned lock is still consistent here: every counter update is a
    /// single atomic store, so a panic elsewhere cannot leave a half-written value.
    #[inline]
    fn read(&self) -> ShardedLockReadGuard<'_, ShardInner> {
        self.0.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> ShardedLockWriteGuard<'_, ShardInner> {
        self.0.write().unwrap_or_else(PoisonError::into_inner)
    }
}

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
                    Shard(ShardedLock::new(ShardInner {
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
            .map(|s| self.sweep_shard(&mut s.write(), now))
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
        let mut inner = shard.write();
        if find(&inner.table, hash, item).is_some() {
            return Ok(());
        }
        if inner.table.len() >= inner.next_sweep {
            self.sweep_shard(&mut inner, now);
        }
        if self.keys.load(Ordering::Relaxed) >= self.max_keys {
            drop(inner);
            self.sweep(now);
            inner = shard.write();
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
        let mut values: SmallVec<[u64; 4]> = SmallVec::from_elem(0, items.len());
        let admitted = self.decide_into(now, items, &mut values)?;
        Ok(StoreDecision {
            now,
            admitted,
            values,
            lease: 0,
            degraded: false,
        })
    }

    /// [`MemoryStore::decide_now`] writing each item's counter into `values` (as long as
    /// `items`) and returning whether every item admitted: the limiter's hot path, which
    /// builds no intermediate decision.
    pub fn decide_into<I: AsCheckItem>(
        &self,
        now: Nanos,
        items: &[I],
        values: &mut [u64],
    ) -> Result<bool, StoreError> {
        match items {
            [] => Ok(true),
            [one] => {
                let (admitted, value) = self.decide_one(now, &one.item())?;
                if let Some(v) = values.first_mut() {
                    *v = value;
                }
                Ok(admitted)
            }
            many => self.decide_many(now, many, values),
        }
    }

    /// One item: `(admitted, value)`.
    #[inline]
    fn decide_one(&self, now: Nanos, item: &CheckItem<'_>) -> Result<(bool, u64), StoreError> {
        let hash = self.hash(item.limit, item.scope);
        let shard = &self.shards[self.shard_of(hash)];
        loop {
            {
                let inner = shard.read();
                if let Some(slot) = find(&inner.table, hash, item) {
                    return Ok(cas_apply(&slot.value, &item.op, now));
                }
            }
            // An absent key behaves as value 0; a rejection needs no key at all.
            if item.op.apply(0, now).is_none() {
                return Ok((false, 0));
            }
            self.insert(hash, item, now)?;
        }
    }

    /// Several items: all-or-nothing. Up to [`STACK_ITEMS`] items (every realistic
    /// policy) decide on stack scratch space; more use the heap.
    fn decide_many<I: AsCheckItem>(
        &self,
        now: Nanos,
        items: &[I],
        out: &mut [u64],
    ) -> Result<bool, StoreError> {
        let n = items.len();
        if n <= STACK_ITEMS {
            let mut words = [0u64; 3 * STACK_ITEMS];
            let mut idx = [0usize; 4 * STACK_ITEMS];
            self.decide_many_in(now, items, out, Scratch::new(&mut words, &mut idx, n))
        } else {
            let mut words = vec![0u64; 3 * n];
            let mut idx = vec![0usize; 4 * n];
            self.decide_many_in(now, items, out, Scratch::new(&mut words, &mut idx, n))
        }
    }

    fn decide_many_in<I: AsCheckItem>(
        &self,
        now: Nanos,
        items: &[I],
        out: &mut [u64],
        sc: Scratch<'_>,
    ) -> Result<bool, StoreError> {
        let Scratch {
            hashes,
            unique,
            current,
            shard_of,
            shard_ids,
            order,
            of,
        } = sc;
        for (i, it) in items.iter().enumerate() {
            let c = it.item();
            hashes[i] = self.hash(c.limit, c.scope);
            shard_of[i] = self.shard_of(hashes[i]);
        }
        // Distinct shards in ascending order: every decision read-locks in the same order.
        shard_ids.copy_from_slice(shard_of);
        shard_ids.sort_unstable();
        let mut m = 0;
        for k in 0..shard_ids.len() {
            if k == 0 || shard_ids[k] != shard_ids[m - 1] {
                shard_ids[m] = shard_ids[k];
                m += 1;
            }
        }
        let shard_ids = &shard_ids[..m];
        loop {
            let mut guards: SmallVec<[ReadGuard<'_>; STACK_ITEMS]> = SmallVec::new();
            for &id in shard_ids {
                guards.push(self.shards[id].read());
            }
            let missing = {
                let mut slots: SmallVec<[Option<&Slot>; STACK_ITEMS]> =
                    SmallVec::from_elem(None, items.len());
                let slots = slots.as_mut_slice();
                let mut missing = None;
                for (i, it) in items.iter().enumerate() {
                    let pos = shard_ids.iter().position(|&id| id == shard_of[i]);
                    slots[i] = pos
                        .and_then(|p| guards.get(p))
                        .and_then(|g| find(&g.table, hashes[i], &it.item()));
                    if slots[i].is_none() {
                        missing = Some(i);
                        break;
                    }
                }
                if missing.is_none() {
                    return Ok(decide_claimed(
                        now, items, slots, out, unique, current, order, of,
                    ));
                }
                missing
            };
            let Some(i) = missing else { continue };
            // A key is new: insert it (outside every read lock) and decide again.
            drop(guards);
            self.insert(hashes[i], &items[i].item(), now)?;
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

/// Items decided on stack scratch space (see [`MemoryStore::decide_many`]).
const STACK_ITEMS: usize = 8;

type ReadGuard<'a> = ShardedLockReadGuard<'a, ShardInner>;

/// Per-decision scratch arrays, each as long as the decision's items.
struct Scratch<'a> {
    hashes: &'a mut [u64],
    unique: &'a mut [u64],
    current: &'a mut [u64],
    shard_of: &'a mut [usize],
    shard_ids: &'a mut [usize],
    order: &'a mut [usize],
    of: &'a mut [usize],
}

impl<'a> Scratch<'a> {
    fn new(words: &'a mut [u64], idx: &'a mut [usize], n: usize) -> Scratch<'a> {
        let (hashes, rest) = words.split_at_mut(n);
        let (unique, rest) = rest.split_at_mut(n);
        let (current, _) = rest.split_at_mut(n);
        let (shard_of, rest) = idx.split_at_mut(n);
        let (shard_ids, rest) = rest.split_at_mut(n);
        let (order, rest) = rest.split_at_mut(n);
        let (of, _) = rest.split_at_mut(n);
        Scratch {
            hashes,
            unique,
            current,
            shard_of,
            shard_ids,
            order,
            of,
        }
    }
}

/// Claims every distinct counter (in address order, so two decisions never wait on each
/// other in a cycle), evaluates the items in order, then writes all new values or none.
/// Fills `out` with each item's counter (after it, when admitted; as found, when not) and
/// returns whether every item admitted. The same counter named twice is claimed once and
/// its value threads through both items.
#[allow(clippy::too_many_arguments)]
fn decide_claimed<I: AsCheckItem>(
    now: Nanos,
    items: &[I],
    slots: &[Option<&Slot>],
    out: &mut [u64],
    unique: &mut [u64],
    current: &mut [u64],
    order: &mut [usize],
    of: &mut [usize],
) -> bool {
    let addr = |i: usize| slots[i].map_or(0, |s| std::ptr::from_ref(s) as usize);
    // Item indices by counter address; repeats of one counter end up adjacent.
    for (k, o) in order.iter_mut().enumerate() {
        *o = k;
    }
    order.sort_unstable_by_key(|&i| addr(i));
    // `unique[u]` is a distinct counter's claimed value; `of[i]` is item i's counter;
    // `order[u]` becomes the first item of counter u.
    let mut u = 0;
    for k in 0..order.len() {
        let i = order[k];
        if k > 0 && addr(order[k - 1]) == addr(i) {
            of[i] = u - 1;
            continue;
        }
        unique[u] = slots[i].map_or(0, |s| claim(&s.value));
        of[i] = u;
        order[u] = i;
        u += 1;
    }
    let current = &mut current[..u];
    current.copy_from_slice(&unique[..u]);
    let mut admitted = true;
    for (i, it) in items.iter().enumerate() {
        match it.item().op.apply(current[of[i]], now) {
            Some(v) => {
                current[of[i]] = v;
                out[i] = v;
            }
            None => {
                admitted = false;
                break;
            }
        }
    }
    if !admitted {
        current.copy_from_slice(&unique[..u]);
        for (o, &c) in out.iter_mut().zip(of.iter()) {
            *o = unique[c];
        }
    }
    // Release every claim with the final value.
    for (&i, &v) in order[..u].iter().zip(current.iter()) {
        if let Some(s) = slots[i] {
            s.value.store(v, Ordering::Release);
        }
    }
    admitted
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
        let inner = self.shards[self.shard_of(hash)].read();
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

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn rate(limit: &'static str, scope: &'static str, count: u64) -> CheckItem<'static> {
        CheckItem {
            limit,
            scope,
            op: Op::Rate {
                emission_ns: S,
                capacity_ns: count * S,
                cost: 1,
            },
        }
    }

    #[test]
    fn the_same_counter_twice_is_claimed_once_and_threaded() {
        let store = MemoryStore::with_shards(100, 4);
        let now = 1_000 * S;
        // One counter of capacity 3 named twice: each decision takes 2 units.
        let items = [rate("l", "k", 3), rate("l", "k", 3)];
        let mut out = [0u64; 2];
        assert_eq!(store.decide_into(now, &items, &mut out), Ok(true));
        assert_eq!(out, [now + S, now + 2 * S]);
        // Only one unit is left: the pair is refused and nothing moves.
        assert_eq!(store.decide_into(now, &items, &mut out), Ok(false));
        assert_eq!(out, [now + 2 * S, now + 2 * S]);
        let one = [rate("l", "k", 3)];
        let mut out1 = [0u64; 1];
        assert_eq!(store.decide_into(now, &one, &mut out1), Ok(true));
        assert_eq!(out1, [now + 3 * S]);
    }

    #[test]
    fn more_items_than_the_stack_scratch_are_all_or_nothing() {
        let store = MemoryStore::with_shards(100, 4);
        let now = 1_000 * S;
        let names: Vec<String> = (0..STACK_ITEMS + 3).map(|i| format!("l{i}")).collect();
        let mut items: Vec<CheckItem<'_>> = names
            .iter()
            .map(|n| CheckItem {
                limit: n,
                scope: "k",
                op: Op::Rate {
                    emission_ns: S,
                    capacity_ns: 2 * S,
                    cost: 1,
                },
            })
            .collect();
        let mut out = vec![0u64; items.len()];
        assert_eq!(store.decide_into(now, &items, &mut out), Ok(true));
        assert!(out.iter().all(|&v| v == now + S));
        // Tighten the last limit to capacity 1: it refuses, and no other counter moves.
        if let Some(last) = items.last_mut() {
            last.op = Op::Rate {
                emission_ns: S,
                capacity_ns: S,
                cost: 1,
            };
        }
        assert_eq!(store.decide_into(now, &items, &mut out), Ok(false));
        assert!(out.iter().all(|&v| v == now + S), "{out:?}");
        let mut check = [0u64; 1];
        assert_eq!(store.decide_into(now, &items[..1], &mut check), Ok(true));
        assert_eq!(check, [now + 2 * S], "the first counter had not moved");
    }
}
