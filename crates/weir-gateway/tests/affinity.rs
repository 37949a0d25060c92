//! `server.cpu_affinity` on a running server: the worker threads the operating system
//! reports, and the CPUs it lets each run on. A test binary of its own, so that no other
//! test's server adds worker threads of the same names to the process while it looks.

#![cfg(target_os = "linux")]

use std::time::Duration;

/// The CPUs a thread may run on, from `Cpus_allowed_list` ("0-3,6").
fn cpus_of(status: &str) -> Vec<usize> {
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .expect("Cpus_allowed_list")
        .trim();
    let mut cpus = Vec::new();
    for part in list.split(',') {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let (a, b): (usize, usize) = (a.parse().expect("cpu"), b.parse().expect("cpu"));
        cpus.extend(a..=b);
    }
    cpus
}

/// This process's threads named `name`: thread id and the CPUs each may run on.
fn threads_named(name: &str) -> Vec<(u32, Vec<usize>)> {
    let mut found = Vec::new();
    for task in std::fs::read_dir("/proc/self/task")
        .expect("tasks")
        .flatten()
    {
        let dir = task.path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if comm.trim() != name {
            continue;
        }
        let Ok(status) = std::fs::read_to_string(dir.join("status")) else {
            continue;
        };
        let tid = task.file_name().to_string_lossy().parse().expect("tid");
        found.push((tid, cpus_of(&status)));
    }
    found.sort();
    found
}

/// Starts a server with `server` settings; returns its stop switch and the CPUs it says
/// it pinned its workers to.
async fn start(server: &str) -> (tokio::sync::oneshot::Sender<()>, Option<Vec<usize>>) {
    let text =
        format!("[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n{server}\n");
    let config = weir_gateway::Config::parse(&text).expect("config");
    let server = weir_gateway::Server::bind(config, None, None)
        .await
        .expect("bind");
    let cpus = server.cpus().map(<[usize]>::to_vec);
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let _ = server
            .run(async move {
                let _ = rx.await;
            })
            .await;
    });
    (tx, cpus)
}

/// The CPUs of a thread named `name` that is not in `known`, once they are `expected`
/// (a worker pins itself as it starts, just after it gets its name), or as last seen
/// after 5 s.
async fn new_thread(name: &str, known: &[(u32, Vec<usize>)], expected: &[usize]) -> Vec<usize> {
    let mut seen = Vec::new();
    for _ in 0..500 {
        if let Some((_, cpus)) = threads_named(name)
            .into_iter()
            .find(|(tid, _)| known.iter().all(|(k, _)| k != tid))
        {
            if cpus == expected {
                return cpus;
            }
            seen = cpus;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    seen
}

#[tokio::test]
async fn workers_are_pinned_one_per_cpu_when_asked() {
    let mine = cpus_of(&std::fs::read_to_string("/proc/thread-self/status").expect("status"));

    // The default ("none"): the worker may run wherever the process may.
    let (stop_none, cpus) = start("workers = 1").await;
    assert_eq!(cpus, None);
    let allowed = new_thread("weir-worker-0", &[], &mine).await;
    assert_eq!(allowed, mine, "an unpinned worker keeps the process's CPUs");

    // "auto", with as many workers as CPUs: each on its own CPU, in order.
    let known = threads_named("weir-worker-0");
    let (stop_auto, cpus) = start(&format!(
        "workers = {}\ncpu_affinity = \"auto\"",
        mine.len()
    ))
    .await;
    assert_eq!(cpus.as_deref(), Some(mine.as_slice()));
    for (n, cpu) in mine.iter().enumerate() {
        let name = format!("weir-worker-{n}");
        let known = if n == 0 { known.clone() } else { Vec::new() };
        let allowed = new_thread(&name, &known, &[*cpu]).await;
        assert_eq!(allowed, vec![*cpu], "{name}");
    }

    // More workers than CPUs: left to the operating system.
    let known = threads_named("weir-worker-0");
    let (stop_more, cpus) = start(&format!(
        "workers = {}\ncpu_affinity = \"auto\"",
        mine.len() + 1
    ))
    .await;
    assert_eq!(cpus, None);
    let allowed = new_thread("weir-worker-0", &known, &mine).await;
    assert_eq!(allowed, mine, "more workers than CPUs are not pinned");

    for stop in [stop_none, stop_auto, stop_more] {
        let _ = stop.send(());
    }
}
