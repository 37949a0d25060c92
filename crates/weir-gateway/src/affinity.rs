//! Where the worker threads run (`server.cpu_affinity`).
//!
//! weir serves thread-per-core: each worker thread has its own event loop and never hands a
//! request to another, so the workers are only as good as the CPUs they get. Left to the
//! operating system, two busy workers of one process can end up queued on the same CPU
//! while another CPU sits idle, the balancer leaving them there because each ran a moment
//! ago (their caches are "hot"): on the 2-core benchmark machine (Linux 6.18, weir, wrk and
//! the upstream sharing both cores), whole runs of several seconds had the machine 10–20%
//! idle and about 30% fewer requests served, `perf sched` showing one CPU idling between
//! short runs of wrk while the other queued weir's workers and the upstream. Pinning worker `i` to the `i`-th CPU
//! the process may use keeps the workers apart, and every other process (and weir's own
//! admin threads) stays free to move around them.
//!
//! It is not the default: on that machine pinning also took from weir the freedom to move
//! away from a CPU that wrk or the upstream was busy on, and over the issue-5 benchmark the
//! two balanced out (three pinned runs: 0.966x, 0.986x and 0.967x of nginx over their
//! alternating pairs; four unpinned: 1.001x, 0.988x, 0.991x and 0.998x). Where weir has CPUs to itself,
//! pinning is the usual choice for a thread-per-core server.
//!
//! Pinning is skipped when there are more workers than CPUs (two workers would then share
//! one CPU for good, which the scheduler does better) and where the platform has no
//! affinity call (outside Linux).

/// Whether the worker threads are pinned to CPUs (`server.cpu_affinity`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CpuAffinity {
    /// Worker `i` runs only on the `i`-th CPU the process may use.
    Auto,
    /// The operating system places the worker threads.
    #[default]
    None,
}

impl CpuAffinity {
    /// The mode named by a configuration value.
    pub fn parse(s: &str) -> Option<CpuAffinity> {
        match s {
            "auto" => Some(CpuAffinity::Auto),
            "none" => Some(CpuAffinity::None),
            _ => None,
        }
    }
}

/// The CPU for each of `workers` worker threads, given the CPUs the process may run on
/// (ascending, as [`allowed`] returns them): the first `workers` of them. `None` when there
/// are more workers than CPUs, or no workers.
pub fn assign(allowed: &[usize], workers: usize) -> Option<Vec<usize>> {
    (workers > 0 && workers <= allowed.len()).then(|| allowed[..workers].to_vec())
}

/// The CPUs the calling thread may run on, ascending (its affinity mask: a container's
/// cpuset or a `taskset` narrow it).
#[cfg(target_os = "linux")]
pub fn allowed() -> std::io::Result<Vec<usize>> {
    let set = rustix::thread::sched_getaffinity(None)?;
    Ok((0..rustix::thread::CpuSet::MAX_CPU)
        .filter(|&cpu| set.is_set(cpu))
        .collect())
}

/// The CPUs the calling thread may run on: unknown on this platform.
#[cfg(not(target_os = "linux"))]
pub fn allowed() -> std::io::Result<Vec<usize>> {
    Err(std::io::ErrorKind::Unsupported.into())
}

/// Pins the calling thread to `cpu`.
#[cfg(target_os = "linux")]
pub fn pin_current(cpu: usize) -> std::io::Result<()> {
    if cpu >= rustix::thread::CpuSet::MAX_CPU {
        return Err(std::io::ErrorKind::InvalidInput.into());
    }
    let mut set = rustix::thread::CpuSet::new();
    set.set(cpu);
    rustix::thread::sched_setaffinity(None, &set)?;
    Ok(())
}

/// Pins the calling thread to `cpu`: not possible on this platform.
#[cfg(not(target_os = "linux"))]
pub fn pin_current(_cpu: usize) -> std::io::Result<()> {
    Err(std::io::ErrorKind::Unsupported.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_values_parse() {
        assert_eq!(CpuAffinity::parse("auto"), Some(CpuAffinity::Auto));
        assert_eq!(CpuAffinity::parse("none"), Some(CpuAffinity::None));
        assert_eq!(CpuAffinity::parse("Auto"), None);
        assert_eq!(CpuAffinity::parse(""), None);
        assert_eq!(CpuAffinity::default(), CpuAffinity::None);
    }

    #[test]
    fn workers_take_the_first_allowed_cpus_and_only_one_each() {
        assert_eq!(assign(&[0, 1], 2), Some(vec![0, 1]));
        assert_eq!(assign(&[0, 1, 2, 3], 1), Some(vec![0]));
        // A cpuset that skips CPUs: the CPUs it has, in order.
        assert_eq!(assign(&[2, 3, 6], 2), Some(vec![2, 3]));
        assert_eq!(assign(&[2, 3, 6], 3), Some(vec![2, 3, 6]));
        // More workers than CPUs: left to the scheduler.
        assert_eq!(assign(&[0, 1], 3), None);
        assert_eq!(assign(&[], 1), None);
        assert_eq!(assign(&[0, 1], 0), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_pinned_thread_may_run_only_on_its_cpu() {
        let cpus = allowed().expect("the affinity mask");
        assert!(!cpus.is_empty());
        assert!(cpus.windows(2).all(|w| w[0] < w[1]), "ascending: {cpus:?}");
        let last = *cpus.last().expect("a cpu");
        let seen = std::thread::spawn(move || {
            pin_current(last).expect("pin");
            allowed().expect("the affinity mask")
        })
        .join()
        .expect("thread");
        assert_eq!(seen, vec![last]);
        // The thread that did not pin itself keeps its mask.
        assert_eq!(allowed().expect("the affinity mask"), cpus);
        assert!(pin_current(rustix::thread::CpuSet::MAX_CPU).is_err());
    }
}
