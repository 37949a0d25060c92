//! Deadlines for upstream exchanges on a worker thread, checked by one coarse timer per
//! thread instead of a timer per exchange.
//!
//! A tokio timer per exchange is inserted into the runtime's timer wheel when the exchange
//! first waits and removed when it ends (atomic operations on the timer's state, and the
//! wheel's lock), for timeouts that almost never fire: measured, this table saves about 1%
//! of the gateway's instructions per request (`docs/benchmarks-history.md`, session 8). Here
//! an exchange notes its deadline and waker in the thread's table (a slot taken and given
//! back, no lock), and one ticker task per thread, running only while exchanges are in
//! flight, wakes those whose deadline has passed every [`TICK`]. A timeout so fires between
//! its deadline and one tick later: at upstream timeouts of seconds, that is noise.
//!
//! The table belongs to the thread, so it serves only where every task of the thread runs
//! on it: weir's worker threads (current-thread runtimes), which turn it on with
//! [`use_on_this_thread`]. Anywhere else (the gateway as a tower service in any runtime),
//! [`within`] is tokio's own timeout.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::task::{Context, Poll, Waker};
use tokio::time::{Duration, Instant};

/// How often the ticker looks at the deadlines: the most a timeout fires late.
pub(crate) const TICK: Duration = Duration::from_millis(10);

/// The deadline passed before the work was done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Expired;

/// Runs `work` until it is done or `at` has passed, whichever comes first.
pub(crate) fn within<F: Future>(at: Instant, work: F) -> Within<F> {
    if ON.get() {
        Within::Table {
            work,
            slot: Slot { at, key: None },
        }
    } else {
        Within::Tokio {
            timeout: tokio::time::timeout_at(at, work),
        }
    }
}

pin_project_lite::pin_project! {
    /// [`within`]'s future: written out, not an `async fn`, so the work is stored once and
    /// never moved inside it (an exchange's future is large, and each move is a copy).
    #[project = WithinProj]
    pub(crate) enum Within<F> {
        /// On a worker thread: the thread's table.
        Table { #[pin] work: F, slot: Slot },
        /// Anywhere else: tokio's timer.
        Tokio { #[pin] timeout: tokio::time::Timeout<F> },
    }
}

impl<F: Future> Future for Within<F> {
    type Output = Result<F::Output, Expired>;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            WithinProj::Table { work, slot } => {
                if let Poll::Ready(out) = work.poll(cx) {
                    return Poll::Ready(Ok(out));
                }
                if slot.expired(cx) {
                    Poll::Ready(Err(Expired))
                } else {
                    Poll::Pending
                }
            }
            WithinProj::Tokio { timeout } => timeout.poll(cx).map_err(|_| Expired),
        }
    }
}

/// Makes [`within`] use this thread's table: only on a thread whose tasks all run on it (a
/// current-thread runtime), since the ticker is spawned on the runtime that runs the
/// exchange.
pub(crate) fn use_on_this_thread() {
    ON.set(true);
}

thread_local! {
    static ON: Cell<bool> = const { Cell::new(false) };
    static TABLE: RefCell<Table> = const { RefCell::new(Table::new()) };
}

/// The deadlines of the exchanges in flight on this thread.
struct Table {
    entries: Vec<Option<Entry>>,
    /// Free places in `entries`.
    free: Vec<usize>,
    /// Entries in use.
    live: usize,
    /// Whether the ticker task is running.
    ticking: bool,
}

struct Entry {
    at: Instant,
    waker: Waker,
    expired: bool,
}

impl Table {
    const fn new() -> Table {
        Table {
            entries: Vec::new(),
            free: Vec::new(),
            live: 0,
            ticking: false,
        }
    }

    fn insert(&mut self, entry: Entry) -> usize {
        self.live += 1;
        match self.free.pop() {
            Some(key) => {
                self.entries[key] = Some(entry);
                key
            }
            None => {
                self.entries.push(Some(entry));
                self.entries.len() - 1
            }
        }
    }

    fn remove(&mut self, key: usize) {
        if let Some(e) = self.entries.get_mut(key) {
            if e.take().is_some() {
                self.live -= 1;
                self.free.push(key);
            }
        }
    }

    /// Marks and wakes the entries whose deadline is past.
    fn expire(&mut self, now: Instant) {
        for e in self.entries.iter_mut().flatten() {
            if !e.expired && e.at <= now {
                e.expired = true;
                e.waker.wake_by_ref();
            }
        }
    }
}

/// One exchange's place in the table, taken when it first waits, given back when dropped.
pub(crate) struct Slot {
    at: Instant,
    key: Option<usize>,
}

impl Slot {
    /// Whether the deadline has passed; if not, the ticker will wake `cx`'s task once it has.
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        TABLE.with_borrow_mut(|t| match self.key.and_then(|k| t.entries.get_mut(k)) {
            Some(Some(e)) => {
                if !e.expired && !e.waker.will_wake(cx.waker()) {
                    e.waker = cx.waker().clone();
                }
                e.expired
            }
            _ => {
                self.key = Some(t.insert(Entry {
                    at: self.at,
                    waker: cx.waker().clone(),
                    expired: false,
                }));
                if !t.ticking {
                    t.ticking = true;
                    tokio::spawn(tick());
                }
                false
            }
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(key) = self.key {
            // At thread exit the table may be gone already: nothing is left to remove then.
            let _ = TABLE.try_with(|t| t.borrow_mut().remove(key));
        }
    }
}

/// Wakes the exchanges whose deadline passed, every [`TICK`], until none is in flight.
async fn tick() {
    loop {
        tokio::time::sleep(TICK).await;
        let now = Instant::now();
        let idle = TABLE.with_borrow_mut(|t| {
            t.expire(now);
            if t.live == 0 {
                t.ticking = false;
            }
            t.live == 0
        });
        if idle {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live() -> usize {
        TABLE.with_borrow(|t| t.live)
    }

    #[tokio::test(start_paused = true)]
    async fn work_that_ends_in_time_is_not_cut_short() {
        use_on_this_thread();
        let at = Instant::now() + Duration::from_secs(1);
        let out = within(at, async {
            tokio::time::sleep(Duration::from_millis(500)).await;
            7
        })
        .await;
        assert_eq!(out, Ok(7));
        assert_eq!(live(), 0, "the slot is given back");
    }

    #[tokio::test(start_paused = true)]
    async fn work_past_its_deadline_expires_within_a_tick() {
        use_on_this_thread();
        let start = Instant::now();
        let at = start + Duration::from_secs(1);
        let out = within(at, std::future::pending::<()>()).await;
        assert_eq!(out, Err(Expired));
        let ended = Instant::now();
        assert!(ended >= at, "not before the deadline");
        assert!(ended <= at + TICK, "at most a tick after it");
        assert_eq!(live(), 0);
        // The ticker stops once nothing is in flight.
        tokio::time::sleep(TICK * 2).await;
        assert!(!TABLE.with_borrow(|t| t.ticking));
    }

    #[tokio::test(start_paused = true)]
    async fn each_exchange_keeps_its_own_deadline() {
        use_on_this_thread();
        let start = Instant::now();
        let short = within(
            start + Duration::from_millis(100),
            std::future::pending::<()>(),
        );
        let long = within(start + Duration::from_secs(2), async {
            tokio::time::sleep(Duration::from_secs(1)).await;
        });
        let (short, long) = tokio::join!(short, long);
        assert_eq!(short, Err(Expired));
        assert_eq!(long, Ok(()));
        assert_eq!(live(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn dropped_work_gives_its_slot_back() {
        use_on_this_thread();
        let at = Instant::now() + Duration::from_secs(5);
        let cut = tokio::time::timeout(
            Duration::from_millis(50),
            within(at, std::future::pending::<()>()),
        )
        .await;
        assert!(cut.is_err());
        assert_eq!(live(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn off_a_worker_thread_it_is_tokios_timeout() {
        // A fresh runtime thread without `use_on_this_thread`.
        let at = Instant::now() + Duration::from_millis(100);
        let out = within(at, std::future::pending::<()>()).await;
        assert_eq!(out, Err(Expired));
        assert_eq!(live(), 0, "the table was not used");
    }
}
