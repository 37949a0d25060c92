//! ns to find the key of a presented secret among 10, 1,000 and 10,000 configured keys:
//! weir's hash-table lookup (then one constant-time compare) next to the linear
//! constant-time scan over every stored hash it replaced, in the same run.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use std::hint::black_box;
use std::time::SystemTime;
use subtle::ConstantTimeEq;
use weir_gateway::identity::{authenticate, ApiKey, KeyHash, KeyIndex};

fn keys(n: usize) -> Vec<ApiKey> {
    (0..n)
        .map(|i| ApiKey {
            id: format!("k{i}"),
            hash: KeyHash::of(&format!("secret-{i}")),
            user: "u".into(),
            organisation: "o".into(),
            plan: "p".into(),
            scopes: Vec::new(),
            expires: None,
            upstream_headers: Default::default(),
        })
        .collect()
}

/// The scan: the presented key's hash compared with every stored hash in constant time.
fn scan<'k>(keys: &'k [ApiKey], presented: &str) -> Option<&'k ApiKey> {
    let hash = KeyHash::of(presented);
    let mut found = None;
    for k in keys {
        if bool::from(k.hash.as_bytes().ct_eq(hash.as_bytes())) {
            found = Some(k);
        }
    }
    found
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("authenticate");
    for n in [10usize, 1_000, 10_000] {
        let keys = keys(n);
        let index = KeyIndex::new(&keys);
        let presented = format!("secret-{}", n / 2);
        let now = SystemTime::now();
        g.bench_with_input(BenchmarkId::new("weir_index", n), &n, |b, _| {
            b.iter(|| authenticate(&keys, &index, Some(black_box(&presented)), || now).is_ok())
        });
        g.bench_with_input(BenchmarkId::new("linear_scan", n), &n, |b, _| {
            b.iter(|| scan(&keys, black_box(&presented)).is_some())
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
