//! The whole loop against a real server: upload a PDF, an HTML page and a Markdown file, index,
//! search, ask over SSE, dedup, new version swapped atomically, delete.

use crate::common::*;
use serde_json::{json, Value};
use std::time::Duration;

const MD: &str = "# Zephyr Deployment Guide\n\n\
## Ports\n\nThe zephyr daemon listens on port 7412 by default. Change it with the `listen_port` option.\n\n\
## Backups\n\nSnapshots of the zephyr catalog are written every 45 minutes to the spool directory.\n";

fn doc<'a>(docs: &'a [Value], name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["name"] == name)
        .unwrap_or_else(|| panic!("{name} not listed: {docs:?}"))
}

#[test]
fn upload_index_search_ask_version_delete() {
    let s = Server::start();
    let pdf = fixture("bashref-3pages.pdf");
    let html = fixture("gzip.html");
    let (status, up) = s.upload(
        "docs",
        &[
            ("bashref.pdf", pdf.clone()),
            ("gzip.html", html.clone()),
            ("zephyr.md", MD.as_bytes().to_vec()),
        ],
    );
    assert_eq!(status, 202, "{up}");
    let uploaded = up["documents"].as_array().unwrap().clone();
    assert_eq!(uploaded.len(), 3);
    for d in &uploaded {
        assert_eq!(d["duplicate"], false);
        let job = s.wait_job(d["job_id"].as_str().unwrap());
        assert_eq!(job["status"], "done", "{job}");
        assert_eq!(job["stage"], "done");
        assert!(job["total"].as_i64().unwrap() > 0);
    }

    // The listing shows status, type, size, pages, chunks, tokens.
    let (status, list) = s.get("/v1/collections/docs/documents");
    assert_eq!(status, 200);
    let docs = list["documents"].as_array().unwrap().clone();
    assert_eq!(docs.len(), 3);
    let p = doc(&docs, "bashref.pdf");
    assert_eq!(p["status"], "ready");
    assert_eq!(p["media_type"], "pdf");
    assert_eq!(p["pages"], 3);
    assert_eq!(p["size_bytes"].as_u64().unwrap(), pdf.len() as u64);
    assert!(
        p["chunks"].as_i64().unwrap() >= 3 && p["tokens"].as_i64().unwrap() > 500,
        "{p}"
    );
    assert_eq!(doc(&docs, "gzip.html")["media_type"], "html");
    assert_eq!(doc(&docs, "zephyr.md")["media_type"], "markdown");

    // Search finds a passage from each document, with page and heading metadata.
    let hits = s.search(
        "docs",
        "A non-quoted backslash is the Bash escape character",
        3,
    );
    assert_eq!(hits[0]["doc_name"], "bashref.pdf", "{hits:?}");
    assert_eq!(
        hits[0]["page"], 3,
        "the escape character is on page 3: {:?}",
        hits[0]
    );
    assert!(loose(hits[0]["text"].as_str().unwrap()).contains("bash escape character"));

    let hits = s.search(
        "docs",
        "default compression level of GzipFile compresslevel",
        3,
    );
    assert_eq!(hits[0]["doc_name"], "gzip.html", "{hits:?}");
    assert!(
        hits[0]["heading"].as_str().unwrap_or("").contains("gzip"),
        "{:?}",
        hits[0]
    );

    let hits = s.search("docs", "which port does the zephyr daemon listen on", 3);
    assert_eq!(hits[0]["doc_name"], "zephyr.md", "{hits:?}");
    // The whole file is one chunk, starting at its title.
    assert_eq!(hits[0]["heading"], "Zephyr Deployment Guide");
    // Every mode works.
    for mode in ["dense", "sparse", "hybrid"] {
        let (st, v) = s.post_json(
            "/v1/search",
            &json!({"collection": "docs", "query": "zephyr daemon port", "mode": mode, "top_k": 2}),
        );
        assert_eq!(st, 200, "{v}");
        assert_eq!(v["results"][0]["doc_name"], "zephyr.md", "mode {mode}: {v}");
    }

    // /v1/ask: the SSE contract, event by event.
    let events = s.ask_sse(&json!({"collection": "docs", "question": "Which port does the zephyr daemon listen on by default?"}));
    let names: Vec<&str> = events.iter().map(|(e, _)| e.as_str()).collect();
    assert_eq!(names[0], "meta");
    assert_eq!(names[1], "sources");
    assert_eq!(*names.last().unwrap(), "done");
    assert!(names[2..names.len() - 1].iter().all(|n| *n == "token"));
    assert!(names.len() > 5, "tokens arrive in pieces: {names:?}");
    let meta = &events[0].1;
    assert!(meta["request_id"].as_str().unwrap().len() > 8);
    assert_eq!(meta["cached"], false);
    assert_eq!(meta["model"], "extractive");
    let sources = events[1].1.as_array().unwrap();
    assert_eq!(sources[0]["n"], 1);
    for k in ["chunk_id", "doc_id", "doc_name", "score", "text"] {
        assert!(!sources[0][k].is_null(), "source lacks {k}: {}", sources[0]);
    }
    let streamed: String = events[2..events.len() - 1]
        .iter()
        .map(|(_, d)| d["text"].as_str().unwrap().to_string())
        .collect();
    let done = &events.last().unwrap().1;
    assert_eq!(done["answer"].as_str().unwrap(), streamed);
    assert!(streamed.contains("7412"), "{streamed}");
    let cites = done["citations"].as_array().unwrap();
    assert!(!cites.is_empty());
    let cited = &sources[cites[0].as_u64().unwrap() as usize - 1];
    assert_eq!(
        cited["doc_name"], "zephyr.md",
        "the citation points at the source it quotes"
    );
    assert_eq!(done["declined"], false);
    for k in ["retrieve", "total"] {
        assert!(done["timings_ms"][k].is_u64(), "{done}");
    }
    assert!(done["usage"]["cost_usd"].is_number());
    assert!(!done["context"]["included"].as_array().unwrap().is_empty());

    // A question the documents cannot answer is declined, not made up.
    let (st, v) = s.post_json(
        "/v1/ask",
        &json!({"collection": "docs", "question": "Does kubernetes support SAML single sign-on with Okta?", "stream": false}),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["declined"], true, "{v}");

    // The same as one JSON body.
    let r = Server::client()
        .post(s.url("/v1/ask"))
        .header("accept", "application/json")
        .json(&json!({"collection": "docs", "question": "How often are zephyr catalog snapshots written?"}))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let v: Value = r.json().unwrap();
    assert!(v["answer"].as_str().unwrap().contains("45 minutes"), "{v}");
    assert!(!v["sources"].as_array().unwrap().is_empty());
    assert!(v["meta"]["request_id"].is_string());

    // Same bytes again: the existing document, no new chunks.
    let md_id = doc(&docs, "zephyr.md")["id"].as_str().unwrap().to_string();
    let (_, before) = s.get("/v1/collections/docs");
    let (status, again) = s.upload("docs", &[("zephyr-copy.md", MD.as_bytes().to_vec())]);
    assert_eq!(status, 202);
    assert_eq!(again["documents"][0]["duplicate"], true);
    assert_eq!(again["documents"][0]["document_id"], md_id.as_str());
    let (_, after) = s.get("/v1/collections/docs");
    assert_eq!(before["points"], after["points"], "no duplicate chunks");
    assert_eq!(after["documents"], 3);

    // New bytes under the same name: version 2 replaces version 1 atomically once indexed.
    // v2 is long enough that its indexing takes a while; while it runs, questions see only v1.
    let mut v2 = String::from(
        "# Zephyr Deployment Guide\n\n## Ports\n\nThe zephyr daemon now listens on port 9931.\n\n",
    );
    for i in 0..300 {
        v2.push_str(&format!(
            "## Appendix {i}\n\nOperational note {i}: rotate the quartz ledger {i} times per shift and record the outcome in the ledger book.\n\n"
        ));
    }
    let (status, up2) = s.upload("docs", &[("zephyr.md", v2.into_bytes())]);
    assert_eq!(status, 202, "{up2}");
    let d2 = &up2["documents"][0];
    assert_eq!(d2["document_id"], md_id.as_str());
    assert_eq!(d2["version"], 2);
    let job2 = d2["job_id"].as_str().unwrap().to_string();
    let mut checked_mid_flight = false;
    loop {
        let (_, job) = s.get(&format!("/v1/jobs/{job2}"));
        if job["status"] == "done" {
            break;
        }
        assert_ne!(job["status"], "failed", "{job}");
        if job["stage"] == "embed" && job["done"].as_i64().unwrap_or(0) > 0 {
            // Some v2 chunks are already in the index, but none may be visible yet.
            let quartz = s.search("docs", "quartz ledger rotation operational note", 5);
            let port = s.search("docs", "zephyr daemon listens on port", 3);
            let (_, d) = s.get(&format!("/v1/documents/{md_id}"));
            // Conclusive only if v2 was still not live after both searches ran.
            let (_, after) = s.get(&format!("/v1/jobs/{job2}"));
            if after["status"] != "done" {
                assert!(
                    quartz
                        .iter()
                        .all(|h| !h["text"].as_str().unwrap().contains("quartz")),
                    "v2 visible before it is live: {quartz:?}"
                );
                assert!(
                    port[0]["text"].as_str().unwrap().contains("7412"),
                    "v1 gone early: {port:?}"
                );
                assert_eq!(d["status"], "processing");
                assert_eq!(d["live_version"], 1);
                checked_mid_flight = true;
            }
        }
        std::thread::sleep(Duration::from_millis(40));
    }
    assert!(
        checked_mid_flight,
        "v2 indexed too fast to observe; make it longer"
    );
    let hits = s.search("docs", "zephyr daemon listens on port", 5);
    assert!(
        hits[0]["text"].as_str().unwrap().contains("9931"),
        "{hits:?}"
    );
    assert!(
        hits.iter()
            .all(|h| !h["text"].as_str().unwrap().contains("7412")),
        "v1 still visible after the swap: {hits:?}"
    );
    let (_, d) = s.get(&format!("/v1/documents/{md_id}"));
    assert_eq!(d["status"], "ready");
    assert_eq!(d["version"], 2);
    assert_eq!(d["live_version"], 2);
    // v1's points are gone from the index, not just hidden.
    wait_until("v1 points purged", Duration::from_secs(20), || {
        let (_, c) = s.get("/v1/collections/docs");
        c["points"] == c["chunks"]
    });

    // Delete: the document and every chunk go.
    let pdf_id = doc(&docs, "bashref.pdf")["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(s.delete(&format!("/v1/documents/{pdf_id}")), 204);
    assert_eq!(s.get(&format!("/v1/documents/{pdf_id}")).0, 404);
    assert_eq!(s.delete(&format!("/v1/documents/{pdf_id}")), 404);
    let hits = s.search(
        "docs",
        "A non-quoted backslash is the Bash escape character",
        10,
    );
    assert!(
        hits.iter().all(|h| h["doc_name"] != "bashref.pdf"),
        "{hits:?}"
    );
    let (_, c) = s.get("/v1/collections/docs");
    assert_eq!(c["documents"], 2);
    assert_eq!(c["points"], c["chunks"], "no orphaned chunks: {c}");

    // Everything survives a graceful restart.
    let mut s = s;
    s.restart();
    let hits = s.search("docs", "zephyr daemon listens on port", 1);
    assert!(hits[0]["text"].as_str().unwrap().contains("9931"));
    let (_, c) = s.get("/v1/collections/docs");
    assert_eq!(c["points"], c["chunks"], "{c}");
}

#[test]
fn job_events_stream_progress_until_done() {
    let s = Server::start();
    // A name that looks like a flag must reach the extractor as a name.
    let (status, up) = s.upload(
        "ev",
        &[(
            "--notes.txt",
            "kb streams job progress as server-sent events. "
                .repeat(200)
                .into_bytes(),
        )],
    );
    assert_eq!(status, 202);
    let job = up["documents"][0]["job_id"].as_str().unwrap();
    let text = Server::client()
        .get(s.url(&format!("/v1/jobs/{job}/events")))
        .send()
        .unwrap()
        .text()
        .unwrap();
    let events = parse_sse(&text);
    assert!(events.iter().all(|(e, _)| e == "progress"));
    let last = &events.last().unwrap().1;
    assert_eq!(last["status"], "done", "{events:?}");
    assert_eq!(last["done"], last["total"]);
    // Once done, a new subscriber gets the final state and the stream ends.
    let text = Server::client()
        .get(s.url(&format!("/v1/jobs/{job}/events")))
        .send()
        .unwrap()
        .text()
        .unwrap();
    let again = parse_sse(&text);
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].1["status"], "done");
}

/// Logs carry no question or answer text unless `log.content` is switched on.
#[test]
fn logs_carry_user_text_only_when_content_logging_is_on() {
    const Q: &str = "Which quay does the ferry named Wren Halloway leave from?";
    for content in [false, true] {
        let log = tempfile::NamedTempFile::new().unwrap();
        let flag = content.to_string();
        let mut s = Server::start_logging_to(
            &[
                ("KB_LOG__CONTENT", flag.as_str()),
                ("KB_LOG", "info"),
                ("KB_LOG__FORMAT", "json"),
            ],
            log.path(),
        );
        let (st, up) = s.upload(
            "logs",
            &[(
                "ferry.md",
                b"# Ferries\n\nThe ferry Wren Halloway leaves from the north quay.\n".to_vec(),
            )],
        );
        assert_eq!(st, 202, "{up}");
        s.wait_job(up["documents"][0]["job_id"].as_str().unwrap());
        let (st, v) = s.post_json(
            "/v1/ask",
            &json!({"collection": "logs", "question": Q, "stream": false}),
        );
        assert_eq!(st, 200, "{v}");
        assert!(v["answer"].as_str().unwrap().contains("north quay"), "{v}");
        s.stop();
        let text = std::fs::read_to_string(log.path()).unwrap();
        assert!(text.contains("\"request\""), "the log was written: {text}");
        assert_eq!(
            text.contains("Wren Halloway"),
            content,
            "content logging {content}: {text}"
        );
    }
}

/// In a large collection every question word counts: one the collection never uses ("uv")
/// turns the extractive answer into a decline although it is no name. Below
/// `retrieval.unknown_word_min_chunks` only names count (a small collection lacks most words).
#[test]
fn a_word_a_large_collection_never_uses_is_declined() {
    let docs = [
        (
            "ledger.md",
            b"# Ledger\n\nThe harbour master keeps the cargo ledger in the tower office.\n"
                .to_vec(),
        ),
        (
            "tides.md",
            b"# Tides\n\nHigh tide at the north quay comes at 16:20 on weekdays.\n".to_vec(),
        ),
    ];
    let q = json!({"collection": "port", "question": "Where does the uv tool keep the cargo ledger?", "stream": false});
    for (min_chunks, large) in [("2", true), ("2000", false)] {
        let s = Server::start_with(&[("KB_RETRIEVAL__UNKNOWN_WORD_MIN_CHUNKS", min_chunks)]);
        let (st, up) = s.upload("port", &docs);
        assert_eq!(st, 202, "{up}");
        for d in up["documents"].as_array().unwrap() {
            s.wait_job(d["job_id"].as_str().unwrap());
        }
        let (st, v) = s.post_json("/v1/ask", &q);
        assert_eq!(st, 200, "{v}");
        let unknown = v["grounding"]["unknown_terms"].as_array().unwrap();
        assert_eq!(
            unknown.iter().any(|t| t == "uv"),
            large,
            "{min_chunks}: {v}"
        );
        assert_eq!(v["declined"], large, "{min_chunks}: {v}");
        if !large {
            assert!(
                v["answer"].as_str().unwrap().contains("tower office"),
                "{v}"
            );
        }
    }
}
