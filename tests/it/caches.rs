//! The answer caches (exact, in memory and in a real Redis; semantic) and the embedding cache,
//! against a real server with the real embedder.

use crate::common::*;
use serde_json::{json, Value};

fn ask(s: &Server, body: Value) -> (Value, Value, Vec<Value>, Value) {
    let ev = s.ask_sse(&body);
    let meta = ev[0].1.clone();
    assert_eq!(ev[0].0, "meta", "{ev:?}");
    let sources = ev
        .iter()
        .find(|(e, _)| e == "sources")
        .map(|(_, d)| d.clone())
        .unwrap_or(Value::Null);
    let tokens: Vec<Value> = ev
        .iter()
        .filter(|(e, _)| e == "token")
        .map(|(_, d)| d.clone())
        .collect();
    let (last, done) = ev.last().unwrap().clone();
    assert_eq!(last, "done", "{ev:?}");
    (meta, sources, tokens, done)
}

fn upload_wait(s: &Server, collection: &str, name: &str, text: &str) -> (String, Value) {
    let (st, up) = s.upload(collection, &[(name, text.as_bytes().to_vec())]);
    assert_eq!(st, 202, "{up}");
    let doc = up["documents"][0]["document_id"]
        .as_str()
        .unwrap()
        .to_string();
    let job = s.wait_job(up["documents"][0]["job_id"].as_str().unwrap());
    assert_eq!(job["status"], "done", "{job}");
    (doc, job)
}

/// The value of one series in `/metrics`, e.g. `kb_answer_cache_hits_total{kind="exact"}`.
fn metric(s: &Server, series: &str) -> f64 {
    let text = s.metrics_text();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("{series} not in /metrics:\n{text}"))
        .parse()
        .unwrap()
}

const HALL: &str =
    "# Hall\n\nTwelve lanterns hang in the east hall. They are lit at dusk by the warden.\n";
const Q: &str = "How many lanterns hang in the east hall?";

/// Hits, misses and invalidation of the exact cache on whichever backend `s` uses.
fn exact_cache_rules(s: &Server, c: &str) {
    upload_wait(s, c, "hall.md", HALL);
    let body = json!({"collection": c, "question": Q});
    let (meta1, src1, tok1, done1) = ask(s, body.clone());
    assert_eq!(meta1["cached"], false);
    assert!(done1.get("cache").is_none(), "{done1}");
    assert!(done1["answer"]
        .as_str()
        .unwrap()
        .contains("Twelve lanterns"));

    // The same question (up to case and spacing): the same answer, replayed as tokens.
    let (meta2, src2, tok2, done2) = ask(
        s,
        json!({"collection": c, "question": "  how many LANTERNS hang in\tthe east hall? "}),
    );
    assert_eq!(meta2["cached"], true, "{meta2}");
    assert_eq!(done2["answer"], done1["answer"]);
    assert_eq!(done2["citations"], done1["citations"]);
    assert_eq!(src2, src1);
    assert!(!tok2.is_empty());
    let joined: String = tok2.iter().map(|t| t["text"].as_str().unwrap()).collect();
    assert_eq!(joined, done1["answer"].as_str().unwrap());
    assert_eq!(tok1.len(), tok2.len());
    assert_eq!(done2["cache"]["kind"], "exact");
    assert_eq!(
        done2["usage"],
        json!({"prompt_tokens": 0, "completion_tokens": 0, "cost_usd": 0.0})
    );

    // Other retrieval parameters: another answer may follow, so a miss.
    let (m, ..) = ask(s, json!({"collection": c, "question": Q, "top_k": 3}));
    assert_eq!(m["cached"], false);
    let (m, ..) = ask(s, json!({"collection": c, "question": Q, "mode": "sparse"}));
    assert_eq!(m["cached"], false);
    let (m, ..) = ask(s, json!({"collection": c, "question": Q, "mode": "sparse"}));
    assert_eq!(m["cached"], true, "the sparse answer is cached too");
    // `cache: false` answers afresh.
    let (m, ..) = ask(s, json!({"collection": c, "question": Q, "cache": false}));
    assert_eq!(m["cached"], false);

    // A document change in the collection: the next ask is answered afresh, and its answer
    // comes from the new content.
    let (_, v0) = s.get(&format!("/v1/collections/{c}"));
    let (doc2, _) = upload_wait(
        s,
        c,
        "hall.md",
        "# Hall\n\nThirteen lanterns hang in the east hall since the new wing opened.\n",
    );
    let (_, v1) = s.get(&format!("/v1/collections/{c}"));
    assert!(
        v1["index_version"].as_i64() > v0["index_version"].as_i64(),
        "{v0} {v1}"
    );
    let (m, _, _, d) = ask(s, body.clone());
    assert_eq!(m["cached"], false, "a new version invalidates");
    assert!(d["answer"].as_str().unwrap().contains("Thirteen"), "{d}");
    let (m, ..) = ask(s, body.clone());
    assert_eq!(m["cached"], true);
    // Another document added, then deleted: each invalidates.
    let (other, _) = upload_wait(s, c, "yard.md", "# Yard\n\nThe yard has two wells.\n");
    let (m, ..) = ask(s, body.clone());
    assert_eq!(m["cached"], false, "an upload invalidates");
    assert_eq!(s.delete(&format!("/v1/documents/{other}")), 204);
    let (m, ..) = ask(s, body.clone());
    assert_eq!(m["cached"], false, "a delete invalidates");
    assert_eq!(s.delete(&format!("/v1/documents/{doc2}")), 204);
}

#[test]
fn exact_cache_in_memory() {
    let s = Server::start();
    // The counters in /metrics: ingestion, then one miss and one hit.
    let (hit, miss) = (
        "kb_answer_cache_hits_total{kind=\"exact\"}",
        "kb_answer_cache_misses_total{kind=\"exact\"}",
    );
    assert_eq!((metric(&s, hit), metric(&s, miss)), (0.0, 0.0));
    assert_eq!(metric(&s, "kb_ingest_documents_total"), 0.0);
    let (_, job) = upload_wait(&s, "cache-metrics", "hall.md", HALL);
    assert_eq!(metric(&s, "kb_ingest_documents_total"), 1.0);
    assert_eq!(
        metric(&s, "kb_ingest_chunks_total"),
        job["embedded"].as_f64().unwrap()
    );
    assert!(metric(&s, "kb_ingest_embedding_seconds_count") >= 1.0);
    let body = json!({"collection": "cache-metrics", "question": Q});
    let (m, ..) = ask(&s, body.clone());
    assert_eq!(m["cached"], false);
    assert_eq!((metric(&s, hit), metric(&s, miss)), (0.0, 1.0));
    let (m, ..) = ask(&s, body);
    assert_eq!(m["cached"], true);
    assert_eq!((metric(&s, hit), metric(&s, miss)), (1.0, 1.0));
    assert_eq!(
        metric(&s, "kb_answer_cache_misses_total{kind=\"semantic\"}"),
        0.0,
        "semantic is off: not looked up"
    );
    exact_cache_rules(&s, "cache-mem");
    let (_, info) = s.get("/v1/info");
    assert_eq!(info["cache"]["answers"], "memory", "{info}");
}

/// A real Redis (started by scripts/test.sh, its URL in KB_TEST_REDIS_URL). Without the
/// variable this test says so and passes; with it, an unreachable Redis fails it.
#[test]
fn exact_cache_in_redis() {
    let Ok(url) = std::env::var("KB_TEST_REDIS_URL") else {
        eprintln!("NOTICE: KB_TEST_REDIS_URL is not set: the Redis cache test did not run (scripts/test.sh starts a redis-server)");
        return;
    };
    // Reachable? (fails the test, never skips it)
    let addr = url
        .trim_start_matches("redis://")
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let mut conn = std::net::TcpStream::connect(&addr)
        .unwrap_or_else(|e| panic!("KB_TEST_REDIS_URL={url} is set but Redis is unreachable: {e}"));
    use std::io::{Read, Write};
    conn.write_all(b"PING\r\n").unwrap();
    let mut buf = [0u8; 7];
    conn.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"+PONG\r\n", "not a Redis server at {url}");

    let collection = format!("cache-redis-{}", std::process::id());
    let mut s = Server::start_with(&[("KB_CACHE__REDIS_URL", &url)]);
    let (_, info) = s.get("/v1/info");
    assert_eq!(info["cache"]["answers"], "redis", "{info}");
    exact_cache_rules(&s, &collection);

    // The cache is in Redis, not in the process: a restarted server (another replica, in
    // effect) answers from it.
    let body = json!({"collection": collection, "question": "What does the yard have?"});
    let (m, ..) = ask(&s, body.clone());
    assert_eq!(m["cached"], false);
    s.restart();
    let (m, _, _, d) = ask(&s, body.clone());
    assert_eq!(m["cached"], true, "served from Redis after a restart: {d}");

    // A server pointed at a Redis that is not there does not start.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    s.stop();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_kb"));
    scrub_kb_env(&mut cmd);
    let out = cmd
        .args(["serve", "--addr", "127.0.0.1:0", "--data-dir"])
        .arg(&s.data_dir)
        .env("KB_MODELS_DIR", models_dir())
        .env("KB_CACHE__REDIS_URL", format!("redis://{dead}/0"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cache.redis_url"), "{err}");
}

/// Semantic cache on, at the documented threshold: a paraphrase is served the cached answer,
/// a near-miss (similar words, another answer) is not.
#[test]
fn semantic_cache_serves_paraphrases_not_near_misses() {
    let s = Server::start_with(&[("KB_CACHE__SEMANTIC", "true")]);
    let c = "sem";
    upload_wait(
        &s,
        c,
        "compression.md",
        "# gzip\n\nThe gzip.GzipFile class compresses with level 9 by default.\n\n\
         # zlib\n\nzlib.compress uses Z_DEFAULT_COMPRESSION, which currently means level 6.\n",
    );
    let (m, ..) = ask(
        &s,
        json!({"collection": c, "question": "What compression level does gzip.GzipFile use by default?"}),
    );
    assert_eq!(m["cached"], false);
    let (m, _, _, d) = ask(
        &s,
        json!({"collection": c, "question": "What is the default compression level of gzip.GzipFile?"}),
    );
    assert_eq!(m["cached"], true, "a paraphrase hits: {d}");
    assert_eq!(d["cache"]["kind"], "semantic");
    assert!(d["cache"]["distance"].as_f64().unwrap() <= 0.05);
    let (m, _, _, d) = ask(
        &s,
        json!({"collection": c, "question": "What compression level does zlib.compress use by default?"}),
    );
    assert_eq!(m["cached"], false, "a near-miss does not: {d}");
    assert!(d.get("cache").is_none());
    // Three asks: three exact misses; the second was a semantic hit, the others misses.
    let sem = |r: &str| {
        metric(
            &s,
            &format!("kb_answer_cache_{r}_total{{kind=\"semantic\"}}"),
        )
    };
    assert_eq!((sem("hits"), sem("misses")), (1.0, 2.0));
    assert_eq!(
        metric(&s, "kb_answer_cache_misses_total{kind=\"exact\"}"),
        3.0
    );
}

/// Re-indexing embeds only text this embedder has not embedded before.
#[test]
fn embedding_cache_embeds_only_changed_chunks() {
    let s = Server::start_with(&[
        ("KB_CHUNKING__MAX_TOKENS", "40"),
        ("KB_CHUNKING__OVERLAP_TOKENS", "0"),
    ]);
    let para = |i: usize, extra: &str| {
        format!(
            "## Section {i}\n\nParagraph {i} tells of the harbour keeper number {i}, who rows \
             out each morning to count the buoys and write the count in the log.{extra}\n\n"
        )
    };
    let v1: String = (0..8).map(|i| para(i, "")).collect();
    let (doc, job1) = upload_wait(&s, "emb", "harbour.md", &v1);
    let chunks = s.get(&format!("/v1/documents/{doc}")).1["chunks"]
        .as_i64()
        .unwrap();
    assert!(chunks >= 8, "{chunks} chunks");
    assert_eq!(job1["embedded"], chunks, "{job1}");
    assert_eq!(job1["reused"], 0);

    // Version 2: one paragraph changed.
    let v2: String = (0..8)
        .map(|i| para(i, if i == 5 { " On Sundays he rests." } else { "" }))
        .collect();
    let (_, job2) = upload_wait(&s, "emb", "harbour.md", &v2);
    assert_eq!(job2["embedded"], 1, "only the changed chunk: {job2}");
    assert_eq!(job2["reused"], chunks - 1, "{job2}");
    // The new version answers from the new text.
    let hits = s.search("emb", "What does the keeper do on Sundays?", 1);
    assert!(
        hits[0]["text"].as_str().unwrap().contains("Sundays"),
        "{hits:?}"
    );

    // The same text in another collection: nothing to embed.
    let (_, job3) = upload_wait(&s, "emb2", "harbour.md", &v1);
    assert_eq!(job3["embedded"], 0, "{job3}");
    assert_eq!(job3["reused"], chunks);

    // The same counts in /metrics: embedded chunks + 1 + 0, reused 0 + (chunks - 1) + chunks.
    let chunks = chunks as f64;
    let m = |r: &str| {
        metric(
            &s,
            &format!("kb_embedding_cache_chunks_total{{result=\"{r}\"}}"),
        )
    };
    assert_eq!(m("embedded"), chunks + 1.0);
    assert_eq!(m("reused"), 2.0 * chunks - 1.0);
    assert_eq!(metric(&s, "kb_ingest_documents_total"), 3.0);
    assert_eq!(metric(&s, "kb_ingest_chunks_total"), 3.0 * chunks);
}
