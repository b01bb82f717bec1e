//! Rate-limit buckets in a real Redis (`KB_TEST_REDIS_URL`, set by scripts/test.sh): the Lua
//! scripts, and two "replicas" (two stores, two governors) sharing one budget. Unset: the tests
//! print a notice and pass; set but unreachable: they fail.

use kb::models::governor::{BucketStore, Governor, Limits, Policy};
use kb::models::redis_buckets::{bucket_keys, RedisBuckets};
use kb::models::Priority;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn redis_url() -> Option<String> {
    match std::env::var("KB_TEST_REDIS_URL") {
        Ok(u) if !u.is_empty() => Some(u),
        _ => {
            eprintln!("KB_TEST_REDIS_URL is not set: skipping the Redis bucket tests");
            None
        }
    }
}

async fn store(url: &str) -> RedisBuckets {
    RedisBuckets::connect(url)
        .await
        .unwrap_or_else(|e| panic!("KB_TEST_REDIS_URL={url} is set but unreachable: {e:#}"))
}

/// An upstream name no other test (or earlier run) uses.
fn fresh(prefix: &str) -> String {
    format!("{prefix}:{}", uuid::Uuid::new_v4())
}

#[tokio::test]
async fn the_take_script_limits_refills_and_settles() {
    let Some(url) = redis_url() else { return };
    let s = store(&url).await;
    let k = fresh("test");
    // 3 requests a minute: three now, the fourth in about 20 s.
    for i in 0..3 {
        assert_eq!(
            s.take_shared(&k, (3, 0), 1, 0).await.unwrap(),
            Ok(()),
            "{i}"
        );
    }
    let wait = s.take_shared(&k, (3, 0), 1, 0).await.unwrap().unwrap_err();
    assert!(
        wait > Duration::from_secs(18) && wait <= Duration::from_secs(20),
        "{wait:?}"
    );
    // A give-back makes one available again.
    s.adjust_shared(&k, (3, 0), 1, 0).await.unwrap();
    assert_eq!(s.take_shared(&k, (3, 0), 1, 0).await.unwrap(), Ok(()));
    assert!(s.take_shared(&k, (3, 0), 1, 0).await.unwrap().is_err());

    // Keys are namespaced and expire (when the bucket would be full again, plus a second).
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let (rk, tk) = bucket_keys(&k);
    assert_eq!(rk, format!("kb:bucket:{k}:rpm"));
    let ttl: i64 = redis::cmd("PTTL")
        .arg(&rk)
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(ttl > 55_000 && ttl <= 61_000, "{ttl}");
    let exists: i64 = redis::cmd("EXISTS")
        .arg(&tk)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(exists, 0, "no token limit, no token bucket");

    // Tokens: 600 a minute (10/s). An estimate of 500, settled at 100, gives 400 back.
    let k = fresh("test");
    assert_eq!(s.take_shared(&k, (0, 600), 1, 500).await.unwrap(), Ok(()));
    let wait = s
        .take_shared(&k, (0, 600), 1, 500)
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        wait > Duration::from_secs(38) && wait <= Duration::from_secs(40),
        "{wait:?}"
    );
    s.adjust_shared(&k, (0, 600), 0, 400).await.unwrap();
    assert_eq!(s.take_shared(&k, (0, 600), 1, 500).await.unwrap(), Ok(()));
    // A charge (usage above the estimate) puts the bucket into debt.
    s.adjust_shared(&k, (0, 600), 0, -600).await.unwrap();
    let wait = s
        .take_shared(&k, (0, 600), 1, 1)
        .await
        .unwrap()
        .unwrap_err();
    assert!(wait > Duration::from_secs(59), "{wait:?}");

    // Both limits: a take that fits one bucket but not the other takes from neither.
    let k = fresh("test");
    assert_eq!(s.take_shared(&k, (10, 100), 1, 100).await.unwrap(), Ok(()));
    assert!(s.take_shared(&k, (10, 100), 1, 50).await.unwrap().is_err());
    let level: String = redis::cmd("HGET")
        .arg(bucket_keys(&k).0)
        .arg("level")
        .query_async(&mut c)
        .await
        .unwrap();
    let level: f64 = level.parse().unwrap();
    assert!(
        (9.0..9.1).contains(&level),
        "one request taken, not two: {level}"
    );

    // Larger than the whole bucket: goes through when the bucket is full, then waits.
    let k = fresh("test");
    assert_eq!(s.take_shared(&k, (0, 100), 1, 1000).await.unwrap(), Ok(()));
    let wait = s
        .take_shared(&k, (0, 100), 1, 1)
        .await
        .unwrap()
        .unwrap_err();
    assert!(wait >= Duration::from_secs(60 * 9), "{wait:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_takes_from_two_stores_never_exceed_the_budget() {
    let Some(url) = redis_url() else { return };
    let (a, b) = (store(&url).await, store(&url).await);
    let k = fresh("test");
    let mut tasks = Vec::new();
    for i in 0..40 {
        let s = if i % 2 == 0 { a.clone() } else { b.clone() };
        let k = k.clone();
        tasks.push(tokio::spawn(async move {
            s.take_shared(&k, (10, 0), 1, 0).await.unwrap().is_ok()
        }));
    }
    let mut taken = 0;
    for t in tasks {
        taken += t.await.unwrap() as usize;
    }
    assert_eq!(taken, 10);
}

fn limits(rpm: u32) -> Limits {
    Limits {
        rpm,
        max_concurrency: 64,
        queue_size: 64,
        queue_timeout: Duration::from_secs(30),
        ..Limits::default()
    }
}

/// Two governors (two replicas) on one Redis, rpm = 4: four calls in total get a slot at once,
/// the others wait (4/minute refill: none more within the test's window).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_governors_share_one_rpm_budget() {
    let Some(url) = redis_url() else { return };
    let model = uuid::Uuid::new_v4().to_string();
    let mut ups = Vec::new();
    for _ in 0..2 {
        let g = Governor::with_store(Policy::default(), Arc::new(store(&url).await));
        ups.push(g.upstream("chat", &model, limits(4)));
    }
    let t = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..6 {
        let up = ups[i % 2].clone();
        tasks.push(tokio::spawn(async move {
            let p = tokio::time::timeout(
                Duration::from_millis(1500),
                up.acquire(Priority::Bulk, 0, false),
            )
            .await;
            match p {
                Ok(p) => {
                    // Hold the slot past the window so it cannot be counted twice.
                    let p = p.unwrap();
                    tokio::time::sleep(Duration::from_millis(1600)).await;
                    drop(p);
                    Some(i % 2)
                }
                Err(_) => None,
            }
        }));
    }
    let mut passed = [0, 0];
    for t in tasks {
        if let Some(r) = t.await.unwrap() {
            passed[r] += 1;
        }
    }
    assert_eq!(passed[0] + passed[1], 4, "{passed:?}");
    assert!(t.elapsed() < Duration::from_secs(10));
    // Each replica got at least one: the budget really is shared, not split or doubled.
    assert!(passed[0] >= 1 && passed[1] >= 1, "{passed:?}");
    // The same upstream in a third replica finds the budget spent.
    let g = Governor::with_store(Policy::default(), Arc::new(store(&url).await));
    let up = g.upstream("chat", &model, limits(4));
    let r = tokio::time::timeout(
        Duration::from_millis(500),
        up.acquire(Priority::Bulk, 0, false),
    )
    .await;
    assert!(r.is_err(), "a fifth call within the minute must wait");
    assert!(g.render().contains("kb_rate_limit_redis_fallbacks_total 0"));
}

/// A Redis of our own, stopped mid-test: calls are decided by the local bucket (still limited),
/// counted, and nothing fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_redis_falls_back_to_local_buckets() {
    let Some(shared) = redis_url() else { return };
    // The configured server must be there too (this test then runs its own, to stop it).
    store(&shared).await;
    let dir = tempfile::tempdir().unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut child = std::process::Command::new("redis-server")
        .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
        .args(["--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir.path())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("redis-server (installed by scripts/test.sh)");
    let url = format!("redis://127.0.0.1:{port}/0");
    let mut s = None;
    for _ in 0..50 {
        if let Ok(c) = RedisBuckets::connect(&url).await {
            s = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let s = s.expect("our redis-server started");
    let g = Governor::with_store(Policy::default(), Arc::new(s.clone()));
    let up = g.upstream("chat", "m", limits(3));
    drop(up.acquire(Priority::Bulk, 0, false).await.unwrap());
    assert_eq!(s.fallbacks(), Some(0));

    child.kill().unwrap();
    child.wait().unwrap();
    // Redis is gone: the local bucket (rpm 3, full) decides. Three pass...
    let t = Instant::now();
    for _ in 0..3 {
        let p = tokio::time::timeout(Duration::from_secs(5), up.acquire(Priority::Bulk, 0, false))
            .await
            .expect("not stuck waiting for Redis")
            .unwrap();
        drop(p);
    }
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    // ...and the local limit still holds.
    let r = tokio::time::timeout(
        Duration::from_millis(500),
        up.acquire(Priority::Bulk, 0, false),
    )
    .await;
    assert!(r.is_err(), "the local bucket limits too");
    let n = s.fallbacks().unwrap();
    assert!(n >= 3, "{n}");
    assert!(g
        .render()
        .contains(&format!("kb_rate_limit_redis_fallbacks_total {n}")));
}
