//! A retry budget: retries may be at most a fraction of recent traffic (plus a small floor),
//! so an outage is not multiplied by every client's retry count. Modelled on tower's
//! `TpsBudget`, whose docs explain why a budget beats a fixed attempt cap: a cap of 3
//! attempts turns every request into 3 during an outage, a 20% budget into 1.2.

use parking_lot::Mutex;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Budget settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BudgetConfig {
    /// The window recent traffic is measured over.
    pub window: Duration,
    /// Retries always allowed per second, whatever the traffic.
    pub min_per_sec: u32,
    /// Retries allowed per first attempt, on top of the floor.
    pub ratio: f64,
}

impl Default for BudgetConfig {
    fn default() -> Self {
        BudgetConfig {
            window: Duration::from_secs(10),
            min_per_sec: 2,
            ratio: 0.2,
        }
    }
}

/// The budget, shared by every request of one client.
#[derive(Debug)]
pub struct RetryBudget {
    config: BudgetConfig,
    events: Mutex<VecDeque<(Instant, bool)>>,
}

impl RetryBudget {
    /// A budget.
    pub fn new(config: BudgetConfig) -> RetryBudget {
        RetryBudget {
            config,
            events: Mutex::new(VecDeque::new()),
        }
    }

    fn trim(&self, q: &mut VecDeque<(Instant, bool)>, now: Instant) {
        while q
            .front()
            .is_some_and(|(t, _)| now.saturating_duration_since(*t) > self.config.window)
        {
            q.pop_front();
        }
    }

    /// Records a first attempt.
    pub fn deposit(&self, now: Instant) {
        let mut q = self.events.lock();
        self.trim(&mut q, now);
        q.push_back((now, false));
    }

    /// Takes one retry from the budget; `false` when it is spent.
    pub fn withdraw(&self, now: Instant) -> bool {
        let mut q = self.events.lock();
        self.trim(&mut q, now);
        let (firsts, retries) =
            q.iter().fold(
                (0u64, 0u64),
                |(f, r), (_, retry)| if *retry { (f, r + 1) } else { (f + 1, r) },
            );
        let allowed = self.config.window.as_secs_f64() * f64::from(self.config.min_per_sec)
            + self.config.ratio * firsts as f64;
        if (retries as f64) < allowed {
            q.push_back((now, true));
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_are_a_fraction_of_traffic() {
        let b = RetryBudget::new(BudgetConfig {
            window: Duration::from_secs(10),
            min_per_sec: 0,
            ratio: 0.2,
        });
        let t = Instant::now();
        for _ in 0..100 {
            b.deposit(t);
        }
        let granted = (0..100).filter(|_| b.withdraw(t)).count();
        assert_eq!(granted, 20);
        // Once the window has passed, old traffic no longer buys retries.
        assert!(!b.withdraw(t + Duration::from_secs(11)));
    }
}
