//! CPU time per write of a 300-byte response to a loopback TCP peer: `send` with one buffer
//! (what the server writes a whole small response with) next to `writev` with the same
//! buffer and an empty second slice (what it used before session 22), in the same run.
//!
//! A thread on the other end reads everything. What is timed is the writing thread's own
//! CPU time (on Linux), which includes the kernel's receive side of loopback TCP, run inside
//! the writer's call as it is for the gateway's writes, and leaves out the reader's share of
//! the two cores, which only adds noise to wall-clock time.

use criterion::{criterion_group, criterion_main, Criterion};
use std::io::{IoSlice, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

const RESPONSE: [u8; 300] = [b'x'; 300];

/// A connected writer whose peer is drained by a thread of its own.
fn connected() -> TcpStream {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    let addr = listener.local_addr().expect("the bound address");
    let writer = TcpStream::connect(addr).expect("connect to it");
    let (mut reader, _) = listener.accept().expect("accept the connection");
    writer
        .set_nodelay(true)
        .expect("TCP_NODELAY, as the gateway sets it");
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 16];
        while matches!(reader.read(&mut buf), Ok(n) if n > 0) {}
    });
    writer
}

/// The calling thread's CPU time so far.
#[cfg(target_os = "linux")]
fn cpu_now() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// Elsewhere: wall-clock time since the first call.
#[cfg(not(target_os = "linux"))]
fn cpu_now() -> Duration {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START.get_or_init(std::time::Instant::now).elapsed()
}

/// The writing thread's time for `iters` calls of `write`.
fn timed(iters: u64, mut write: impl FnMut()) -> Duration {
    let start = cpu_now();
    for _ in 0..iters {
        write();
    }
    cpu_now().saturating_sub(start)
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("socket_write_300_bytes");
    let mut send = connected();
    g.bench_function("send, one slice", |b| {
        b.iter_custom(|iters| {
            timed(iters, || {
                let n = send.write(&RESPONSE).expect("written");
                assert_eq!(n, RESPONSE.len(), "a short write to an idle loopback peer");
            })
        })
    });
    let mut writev = connected();
    g.bench_function("writev, two slices (one empty)", |b| {
        b.iter_custom(|iters| {
            timed(iters, || {
                let n = writev
                    .write_vectored(&[IoSlice::new(&RESPONSE), IoSlice::new(&[])])
                    .expect("written");
                assert_eq!(n, RESPONSE.len(), "a short write to an idle loopback peer");
            })
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
