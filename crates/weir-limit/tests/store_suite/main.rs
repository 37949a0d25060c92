//! The store suite: one set of behaviours, run against every store.
//!
//! Each test is written once, generic over a store factory; `memory` runs them on the
//! embedded store. A new backend adds one module that calls [`suite::all`] with its factory.

#[path = "../support/redis_server.rs"]
mod redis_server;
mod suite;

mod memory {
    use weir_limit::MemoryStore;

    #[test]
    fn store_suite() {
        super::suite::all(MemoryStore::default);
    }

    #[test]
    fn store_suite_one_shard() {
        // Every key in one shard: exercises repeated-shard locking in multi-limit decisions.
        super::suite::all(|| MemoryStore::with_shards(1000, 1));
    }
}

/// A fresh key prefix per store, so each suite case starts from empty counters.
fn prefix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!("suite{}", N.fetch_add(1, Ordering::Relaxed))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

mod redis_single {
    use weir_limit::store::redis::{RedisConfig, RedisStore, TimeSource};

    #[test]
    fn store_suite() {
        let server = super::redis_server::RedisServer::start();
        let rt = super::runtime();
        let _guard = rt.enter();
        super::suite::all(|| {
            let mut cfg = RedisConfig::single(server.url());
            cfg.time = TimeSource::Caller;
            cfg.prefix = super::prefix();
            cfg.deadline = std::time::Duration::from_secs(2);
            rt.block_on(RedisStore::connect(cfg)).expect("connect")
        });
    }
}

mod redis_cluster {
    use weir_limit::store::redis::{RedisConfig, RedisStore, TimeSource};

    #[test]
    fn store_suite() {
        let cluster = super::redis_server::RedisCluster::start();
        let rt = super::runtime();
        let _guard = rt.enter();
        super::suite::all(|| {
            let mut cfg = RedisConfig::cluster(cluster.urls());
            cfg.time = TimeSource::Caller;
            cfg.prefix = super::prefix();
            cfg.deadline = std::time::Duration::from_secs(2);
            rt.block_on(RedisStore::connect(cfg)).expect("connect")
        });
    }
}

mod memory_bounds {
    use std::time::Duration;
    use weir_limit::store::StoreErrorKind;
    use weir_limit::{
        Dimension, LimitDef, Limiter, ManualClock, MemoryStore, Policy, Quota, Request,
    };

    #[test]
    fn idle_keys_are_swept_and_the_cap_refuses_only_new_keys() {
        let clock = ManualClock::at_unix_secs(1_700_000_000);
        let policy = Policy::new(vec![LimitDef::rate(
            "ip",
            &[Dimension::ClientIp],
            Quota::per_second(5).expect("q"),
        )])
        .expect("p");
        let limiter = Limiter::new(policy, MemoryStore::with_shards(100, 4), clock.clone());
        let ips: Vec<String> = (0..100).map(|i| format!("10.0.0.{i}")).collect();
        for ip in &ips {
            let d = super::suite::block_on(limiter.check(&Request {
                client_ip: Some(ip),
                ..Request::default()
            }))
            .expect("ok");
            assert!(d.is_admitted());
        }
        assert_eq!(limiter.store().len(), 100);
        // At the cap, with every key live, a new key is refused; old keys still work.
        let err = super::suite::block_on(limiter.check(&Request {
            client_ip: Some("new"),
            ..Request::default()
        }))
        .expect_err("cap");
        assert!(
            matches!(err, weir_limit::LimitError::Store(ref e) if e.kind() == StoreErrorKind::Capacity),
            "{err}"
        );
        assert!(super::suite::block_on(limiter.check(&Request {
            client_ip: Some(&ips[0]),
            ..Request::default()
        }))
        .expect("ok")
        .is_admitted());
        // Once the buckets are whole again the keys are idle: a new key sweeps them away.
        clock.advance(Duration::from_secs(1));
        let d = super::suite::block_on(limiter.check(&Request {
            client_ip: Some("new"),
            ..Request::default()
        }))
        .expect("swept");
        assert!(d.is_admitted());
        assert!(limiter.store().len() <= 2, "{}", limiter.store().len());
    }
}
