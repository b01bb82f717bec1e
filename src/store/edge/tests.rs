//! Qdrant Edge behind `VectorStore`: opening, concurrency, panics, reopening, index builds.

use super::*;
use std::time::{Duration, Instant};

fn point(doc: &str, ord: u32) -> Point {
    Point {
        dense: vec![1.0, ord as f32, 0.5, 0.25],
        payload: ChunkPayload {
            collection: "c".into(),
            doc_id: doc.into(),
            doc_version: 1,
            version_key: format!("{doc}@1"),
            ord,
            text: format!("passage {ord} about lighthouses"),
            token_count: 4,
            gen_token_count: None,
            page: None,
            heading: None,
            byte_start: 0,
            byte_end: 1,
            content_hash: format!("{doc}-{ord}"),
        },
    }
}

#[tokio::test]
async fn a_panic_in_flush_is_an_error_not_a_poisoned_shard() {
    let dir = tempfile::tempdir().unwrap();
    let store = EdgeStore::new(dir.path()).unwrap();
    let spec = CollectionSpec {
        name: "c".into(),
        dim: 4,
        model: "m".into(),
    };
    store.ensure_collection(&spec).await.unwrap();
    store
        .upsert("c", (0..3).map(|i| point("a", i)).collect())
        .await
        .unwrap();

    store
        .get("c")
        .unwrap()
        .fail_next_flush
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let e = store.flush("c").await.unwrap_err();
    assert!(e.is_transient(), "{e:?}");
    let text = e.to_string();
    assert_eq!(text, "the index could not be saved (too many open files)");
    assert!(!text.contains("panicked") && !text.contains("Poison"));

    // Nothing is poisoned: writes, deletes and flushes work again.
    store
        .upsert("c", (0..2).map(|i| point("b", i)).collect())
        .await
        .unwrap();
    store.flush("c").await.unwrap();
    store.delete_version("c", "a@1").await.unwrap();
    assert_eq!(store.count("c", None).await.unwrap(), 2);
    store.close().await;
}

/// The WAL is not replayed, so kb starts a new one at each open; its numbering must carry on
/// above the versions on disk, or a write numbered below a point's version is ignored:
/// deletes and overwrites after a restart did nothing (orphaned chunks that kept answering).
#[tokio::test]
async fn deletes_and_overwrites_after_a_reopen_take_effect() {
    let dir = tempfile::tempdir().unwrap();
    let spec = CollectionSpec {
        name: "c".into(),
        dim: 4,
        model: "m".into(),
    };
    {
        let store = EdgeStore::new(dir.path()).unwrap();
        store.ensure_collection(&spec).await.unwrap();
        // Many operations, so the points' versions are well above a fresh WAL's numbers.
        for i in 0..40 {
            store.upsert("c", vec![point("a", i)]).await.unwrap();
        }
        store.upsert("c", vec![point("b", 0)]).await.unwrap();
        store.flush("c").await.unwrap();
        store.close().await;
    }
    for round in 0..2 {
        let store = EdgeStore::new(dir.path()).unwrap();
        store.ensure_collection(&spec).await.unwrap();
        if round == 0 {
            assert_eq!(store.count("c", Some("a@1")).await.unwrap(), 40);
            store.delete_version("c", "a@1").await.unwrap();
            assert_eq!(store.count("c", Some("a@1")).await.unwrap(), 0);
            // An overwrite of an older point takes effect too.
            let mut p = point("b", 0);
            p.payload.text = "rewritten".into();
            store.upsert("c", vec![p]).await.unwrap();
            store.flush("c").await.unwrap();
        } else {
            assert_eq!(store.count("c", Some("a@1")).await.unwrap(), 0);
            let q = SearchQuery {
                collection: "c".into(),
                dense: Some(vec![1.0, 0.0, 0.5, 0.25]),
                text: "rewritten".into(),
                mode: SearchMode::Dense,
                limit: 5,
                candidates: 5,
                doc_ids: None,
                hidden: vec![],
                fusion: FusionParams::default(),
            };
            let hits = store.search(&q).await.unwrap();
            assert_eq!(hits.len(), 1);
            assert_eq!(hits[0].payload.text, "rewritten");
        }
        store.close().await;
    }
}

/// The background index build must not hold up writes: an upsert, a flush and a delete made
/// while `optimize()` builds HNSW on a collection big enough to need it finish long before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_are_not_held_up_by_the_index_build() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(EdgeStore::new(dir.path()).unwrap());
    let dim = 384;
    let spec = CollectionSpec {
        name: "big".into(),
        dim,
        model: "m".into(),
    };
    store.ensure_collection(&spec).await.unwrap();
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x % 2000) as f32 / 1000.0 - 1.0
    };
    for b in 0..24u32 {
        let points = (0..500u32)
            .map(|i| {
                let mut p = point("d", b * 500 + i);
                p.dense = (0..dim).map(|_| rnd()).collect();
                p
            })
            .collect();
        store.upsert("big", points).await.unwrap();
    }
    store.flush("big").await.unwrap();

    let started = Instant::now();
    let build = {
        let store = store.clone();
        tokio::spawn(async move {
            let changed = store.optimize("big").await.unwrap();
            (changed, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = Instant::now();
    let mut e = point("e", 0);
    e.dense = vec![0.5; dim];
    store.upsert("big", vec![e]).await.unwrap();
    store.flush("big").await.unwrap();
    store.delete_version("big", "e@1").await.unwrap();
    let write = t.elapsed();
    let (changed, built) = build.await.unwrap();
    eprintln!("writes during the build: {write:?}; the build: {built:?}");
    assert!(changed, "nothing to build: the test proves nothing");
    assert!(
        write < Duration::from_secs(2) && write + Duration::from_millis(300) < built,
        "writes took {write:?} while the build took {built:?}"
    );
    assert_eq!(store.count("big", None).await.unwrap(), 12_000);
    store.close().await;
}

#[tokio::test]
async fn concurrent_opens_of_a_new_collection_open_it_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(EdgeStore::new(dir.path()).unwrap());
    let spec = CollectionSpec {
        name: "new".into(),
        dim: 4,
        model: "m".into(),
    };
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let (store, spec) = (store.clone(), spec.clone());
            tokio::spawn(async move { store.ensure_collection(&spec).await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    store.upsert("new", vec![point("a", 0)]).await.unwrap();
    assert_eq!(store.count("new", None).await.unwrap(), 1);
    store.close().await;
}
