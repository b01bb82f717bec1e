//! Reliability of the store and the job layer under the background optimiser, concurrent
//! first uploads, crashes and restarts.

use crate::common::*;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn client(timeout: Duration) -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(timeout)
        .build()
        .unwrap()
}

fn note(i: usize, words: usize) -> Vec<u8> {
    let mut s = format!("# Note {i}\n\n");
    for k in 0..words {
        s.push_str(&format!(
            "Section {k} of note {i}: the keeper of lighthouse {i} logs {k} crossings and the tide at {} metres.\n\n",
            (i * 7 + k) % 13
        ));
    }
    s.into_bytes()
}

/// While the background optimiser builds the index (it runs after a quiet second here),
/// searches, answers, the page, listings, uploads and deletes keep answering within a few
/// seconds: liveness, not speed.
#[test]
fn optimiser_never_holds_up_requests() {
    let log = tempfile::NamedTempFile::new().unwrap();
    let s = Server::start_logging_to(
        &[("KB_STORE__OPTIMIZE_AFTER_SECS", "1"), ("KB_LOG", "info")],
        log.path(),
    );
    let (st, up) = s.upload(
        "w",
        &[
            ("bashref.pdf", fixture("bashref-3pages.pdf")),
            ("gzip.html", fixture("gzip.html")),
            ("note.md", note(0, 40)),
        ],
    );
    assert_eq!(st, 202, "{up}");
    for d in up["documents"].as_array().unwrap() {
        assert_eq!(s.wait_job(d["job_id"].as_str().unwrap())["status"], "done");
    }

    let stop = Arc::new(AtomicBool::new(false));
    let slow: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut readers = Vec::new();
    type Req = (
        &'static str,
        Box<dyn Fn(&reqwest::blocking::Client, &str) -> u16 + Send>,
    );
    let reqs: Vec<Req> = vec![
        (
            "search",
            Box::new(|c, base| {
                c.post(format!("{base}/v1/search"))
                    .json(
                        &json!({"collection": "w", "query": "gzip compression level", "top_k": 5}),
                    )
                    .send()
                    .map(|r| r.status().as_u16())
                    .unwrap_or(0)
            }),
        ),
        (
            "ask",
            Box::new(|c, base| {
                c.post(format!("{base}/v1/ask"))
                    .json(&json!({"collection": "w", "question": "What does the keeper of lighthouse 0 log?", "stream": false}))
                    .send()
                    .map(|r| r.status().as_u16())
                    .unwrap_or(0)
            }),
        ),
        (
            "page",
            Box::new(|c, base| {
                ["/", "/app.js", "/style.css", "/v1/collections/w/documents"]
                    .iter()
                    .map(|p| {
                        c.get(format!("{base}{p}"))
                            .send()
                            .map(|r| r.status().as_u16())
                            .unwrap_or(0)
                    })
                    .max()
                    .unwrap()
            }),
        ),
    ];
    for (name, f) in reqs {
        let (stop, slow, base) = (stop.clone(), slow.clone(), s.base.clone());
        readers.push(std::thread::spawn(move || {
            let c = client(Duration::from_secs(20));
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                let t = Instant::now();
                let status = f(&c, &base);
                let took = t.elapsed();
                if status != 200 || took > Duration::from_secs(5) {
                    slow.lock()
                        .unwrap()
                        .push(format!("{name}: {status} after {took:?}"));
                }
                n += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            n
        }));
    }

    // Writes while the optimiser runs between them: new versions, new documents, deletes, each
    // followed by a quiet spell long enough for the optimiser to start.
    let writer = client(Duration::from_secs(20));
    let timed = |what: &str, f: &mut dyn FnMut() -> u16| {
        let t = Instant::now();
        let status = f();
        let took = t.elapsed();
        if !(200..300).contains(&status) || took > Duration::from_secs(5) {
            slow.lock()
                .unwrap()
                .push(format!("{what}: {status} after {took:?}"));
        }
    };
    let mut docs: Vec<String> = Vec::new();
    for round in 0..6 {
        let files = [
            ("note.md".to_string(), note(round + 1, 30 + 10 * round)),
            (format!("extra-{round}.md"), note(100 + round, 60)),
        ];
        let mut jobs = Vec::new();
        timed("upload", &mut || {
            let mut form = reqwest::blocking::multipart::Form::new();
            for (n, b) in &files {
                form = form.part(
                    "file",
                    reqwest::blocking::multipart::Part::bytes(b.clone()).file_name(n.clone()),
                );
            }
            match writer
                .post(s.url("/v1/collections/w/documents"))
                .multipart(form)
                .send()
            {
                Ok(r) => {
                    let st = r.status().as_u16();
                    let v: Value = r.json().unwrap_or(Value::Null);
                    for d in v["documents"].as_array().cloned().unwrap_or_default() {
                        jobs.push(d["job_id"].as_str().unwrap_or("").to_string());
                    }
                    st
                }
                Err(_) => 0,
            }
        });
        for j in &jobs {
            let t = Instant::now();
            let row = s.wait_job(j);
            assert_eq!(row["status"], "done", "{row}");
            if t.elapsed() > Duration::from_secs(60) {
                slow.lock()
                    .unwrap()
                    .push(format!("job {j} took {:?}", t.elapsed()));
            }
        }
        let (_, list) = s.get("/v1/collections/w/documents");
        for d in list["documents"].as_array().unwrap() {
            if d["name"] == format!("extra-{round}.md") {
                docs.push(d["id"].as_str().unwrap().to_string());
            }
        }
        // Quiet: the optimiser starts (its loop wakes every 2 s).
        std::thread::sleep(Duration::from_millis(2500));
        if round % 2 == 1 {
            let id = docs.remove(0);
            timed("delete", &mut || {
                writer
                    .delete(s.url(&format!("/v1/documents/{id}")))
                    .send()
                    .map(|r| r.status().as_u16())
                    .unwrap_or(0)
            });
        }
        std::thread::sleep(Duration::from_millis(1500));
    }
    stop.store(true, Ordering::SeqCst);
    for r in readers {
        assert!(r.join().unwrap() > 5);
    }
    let log = std::fs::read_to_string(log.path()).unwrap();
    let optimised = log.matches("index optimised").count();
    assert!(
        optimised >= 3,
        "the optimiser ran {optimised} times:\n{log}"
    );
    let slow = slow.lock().unwrap();
    assert!(
        slow.is_empty(),
        "requests held up while the optimiser ran: {slow:#?}"
    );
    let (_, c) = s.get("/v1/collections/w");
    assert_eq!(c["points"], c["chunks"], "{c}");
}

/// 20 simultaneous first uploads to a collection that does not exist yet: its shard is created
/// once, every upload is accepted and indexed, and the index holds exactly the catalog's chunks.
#[test]
fn concurrent_first_uploads_to_a_new_collection() {
    let s = Server::start();
    let base = s.base.clone();
    let threads: Vec<_> = (0..20)
        .map(|i| {
            let base = base.clone();
            std::thread::spawn(move || {
                let form = reqwest::blocking::multipart::Form::new().part(
                    "file",
                    reqwest::blocking::multipart::Part::bytes(note(i, 3 + i % 4))
                        .file_name(format!("n{i}.md")),
                );
                let r = client(Duration::from_secs(120))
                    .post(format!("{base}/v1/collections/fresh/documents"))
                    .multipart(form)
                    .send()
                    .unwrap();
                let st = r.status().as_u16();
                (st, r.json::<Value>().unwrap_or(Value::Null))
            })
        })
        .collect();
    let mut jobs = Vec::new();
    let mut bad = Vec::new();
    for t in threads {
        let (st, v) = t.join().unwrap();
        if st != 202 {
            bad.push(format!("{st}: {v}"));
            continue;
        }
        jobs.push(v["documents"][0]["job_id"].as_str().unwrap().to_string());
    }
    assert!(bad.is_empty(), "uploads refused: {bad:#?}");
    for j in &jobs {
        let row = s.wait_job(j);
        assert_eq!(row["status"], "done", "{row}");
    }
    let (_, list) = s.get("/v1/collections/fresh/documents");
    let docs = list["documents"].as_array().unwrap();
    assert_eq!(docs.len(), 20);
    assert!(docs.iter().all(|d| d["status"] == "ready"), "{list}");
    let (_, c) = s.get("/v1/collections/fresh");
    assert_eq!(c["points"], c["chunks"], "{c}");
    assert!(c["chunks"].as_i64().unwrap() >= 20, "{c}");
}

fn long_doc(paragraphs: usize, topic: &str) -> Vec<u8> {
    let mut s = String::new();
    for i in 0..paragraphs {
        s.push_str(&format!(
            "Paragraph {i}. The {topic} register for berth {i} records {} arrivals before noon, and the clerk signs entry {}.\n\n",
            i % 17,
            i * 31 % 1009
        ));
    }
    s.into_bytes()
}

/// Restarts are not the job's fault: a valid document whose job is killed mid-run (SIGKILL)
/// more times than `jobs.max_attempts` still ends `ready` after the last restart.
#[test]
fn sigkills_mid_job_do_not_use_up_attempts() {
    let mut s = Server::start();
    let (st, up) = s.upload("k", &[("register.txt", long_doc(5000, "harbour"))]);
    assert_eq!(st, 202, "{up}");
    let job = up["documents"][0]["job_id"].as_str().unwrap().to_string();
    let doc = up["documents"][0]["document_id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut last = 0;
    for kill in 0..4 {
        wait_until("embedding under way", Duration::from_secs(180), || {
            let (_, j) = s.get(&format!("/v1/jobs/{job}"));
            assert!(
                j["status"] == "running" || j["status"] == "queued",
                "kill {kill}: the job ended before it: {j} (make the document longer)"
            );
            let done = j["done"].as_i64().unwrap_or(0);
            j["stage"] == "embed" && done > last
        });
        let (_, j) = s.get(&format!("/v1/jobs/{job}"));
        last = j["done"].as_i64().unwrap_or(last);
        s.kill9();
        s.start_again();
    }
    let j = s.wait_job(&job);
    assert_eq!(j["status"], "done", "{j}");
    assert_eq!(j["attempts"], 5, "{j}");
    let (_, d) = s.get(&format!("/v1/documents/{doc}"));
    assert_eq!(d["status"], "ready", "{d}");
    let (_, c) = s.get("/v1/collections/k");
    assert_eq!(c["points"], c["chunks"], "{c}");
}

/// A small deterministic generator (xorshift64*), so the crash points are the same every run.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn generated(rng: &mut Rng, i: usize, version: usize) -> (String, Vec<u8>) {
    let sections = 2 + rng.below(if i.is_multiple_of(4) { 160 } else { 40 }) as usize;
    if i.is_multiple_of(2) {
        let mut s = format!(
            "<html><head><title>Station {i}</title></head><body><h1>Station {i} v{version}</h1>"
        );
        for k in 0..sections {
            s.push_str(&format!(
                "<h2>Platform {k}</h2><p>Station {i} platform {k} (revision {version}) serves line {} every {} minutes; the {} kiosk opens at {}.</p>",
                rng.below(90),
                rng.below(30) + 1,
                ["north", "south", "east", "west"][k % 4],
                rng.below(12) + 5
            ));
        }
        s.push_str("</body></html>");
        (format!("station-{i}.html"), s.into_bytes())
    } else {
        let mut s = format!("# Orchard {i} v{version}\n\n");
        for k in 0..sections {
            s.push_str(&format!(
                "## Row {k}\n\nOrchard {i} row {k} (revision {version}) holds {} trees of the {} variety, picked in week {}.\n\n",
                rng.below(200),
                ["russet", "pippin", "bramley", "gala"][k % 4],
                rng.below(52) + 1
            ));
        }
        (format!("orchard-{i}.md"), s.into_bytes())
    }
}

/// Seeded crash loop: SIGKILLs at random points of a multi-document ingest (with new versions),
/// a restart after each. Then every document is ready (or failed with a reason of kb's own),
/// the index holds exactly the catalog's chunks, and what is not live answers nothing.
/// `KB_CRASH_SEED` picks another seed (`scripts/crash-seeds.sh` runs many).
#[test]
fn crash_loop_leaves_no_orphaned_or_duplicate_chunks() {
    let seed = std::env::var("KB_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(5);
    eprintln!("crash loop seed {seed}");
    let mut rng = Rng(0x6b62_5eed_0000_0000 ^ seed);
    let mut s = Server::start_with(&[("KB_STORE__OPTIMIZE_AFTER_SECS", "1")]);
    let docs: Vec<(String, Vec<u8>)> = (0..16).map(|i| generated(&mut rng, i, 1)).collect();
    let files: Vec<(&str, Vec<u8>)> = docs.iter().map(|(n, b)| (n.as_str(), b.clone())).collect();
    let (st, up) = s.upload("crash", &files);
    let _ = &up;
    assert_eq!(st, 202);
    let started = Instant::now();
    for round in 0..6 {
        std::thread::sleep(Duration::from_millis(300 + rng.below(2500)));
        if round == 1 || round == 3 {
            // New versions while the ingest (and the previous crash's re-runs) are under way.
            let i = (round * 5) % 16;
            let (name, bytes) = generated(&mut rng, i, round + 1);
            let (st, v) = s.upload("crash", &[(name.as_str(), bytes)]);
            assert_eq!(st, 202, "{v}");
            std::thread::sleep(Duration::from_millis(rng.below(1200)));
        }
        s.kill9();
        // The killed process's extraction child (if one was running) may hold the data dir a
        // moment longer.
        std::thread::sleep(Duration::from_millis(500));
        s.start_again();
    }
    // Let everything finish.
    let (_, list) = s.get("/v1/collections/crash/documents");
    for d in list["documents"].as_array().unwrap() {
        s.wait_job(d["job_id"].as_str().unwrap());
    }
    let (_, list) = s.get("/v1/collections/crash/documents");
    let list = list["documents"].as_array().unwrap().clone();
    assert_eq!(list.len(), 16);
    for d in &list {
        match d["status"].as_str().unwrap() {
            "ready" => {}
            "failed" => {
                let e = d["error"].as_str().unwrap_or("");
                assert!(
                    !e.is_empty() && !e.contains("panicked") && !e.contains("Poison"),
                    "{d}"
                );
                // A failed version answers nothing.
                let (st, v) = s.post_json(
                    "/v1/search",
                    &json!({"collection": "crash", "query": d["name"], "top_k": 5, "document_ids": [d["id"]]}),
                );
                assert_eq!(st, 200, "{v}");
                let id = d["id"].as_str().unwrap();
                let live: Vec<String> = match d["live_version"].as_i64() {
                    Some(lv) => (0..d["chunks"].as_u64().unwrap_or(0) as u32)
                        .map(|o| kb::store::chunk_id(id, lv, o).to_string())
                        .collect(),
                    None => vec![],
                };
                for h in v["results"].as_array().unwrap() {
                    assert!(
                        live.contains(&h["chunk_id"].as_str().unwrap().to_string()),
                        "hit of a version that is not live: {h}"
                    );
                }
            }
            other => panic!("document not finished: {other}: {d}"),
        }
    }
    let (_, c) = s.get("/v1/collections/crash");
    assert_eq!(c["points"], c["chunks"], "orphaned or missing chunks: {c}");
    let hits = s.search("crash", "which variety grows in orchard 3", 3);
    assert!(!hits.is_empty());
    // Deleting a document removes all its points.
    let victim = list.iter().find(|d| d["status"] == "ready").unwrap();
    assert_eq!(
        s.delete(&format!("/v1/documents/{}", victim["id"].as_str().unwrap())),
        204
    );
    let (_, c) = s.get("/v1/collections/crash");
    assert_eq!(c["points"], c["chunks"], "points left after a delete: {c}");
    eprintln!("crash loop took {:?}", started.elapsed());
}

/// `DELETE /v1/collections/{c}`: documents, conversations, cached answers and the index go;
/// other collections stay; the name is usable again at once, for new content only.
#[test]
fn a_deleted_collection_is_gone_and_its_name_starts_afresh() {
    let s = Server::start();
    let docs = [
        (
            "ferry.md",
            b"# Ferry\n\nThe night ferry leaves the north pier at eleven.\n".to_vec(),
        ),
        ("mill.md", note(1, 30)),
    ];
    let (st, up) = s.upload("gone", &docs);
    assert_eq!(st, 202, "{up}");
    let (st, kept) = s.upload(
        "kept",
        &[(
            "dock.md",
            b"# Dock\n\nThe dock crane lifts nine tonnes.\n".to_vec(),
        )],
    );
    assert_eq!(st, 202, "{kept}");
    for d in up["documents"]
        .as_array()
        .unwrap()
        .iter()
        .chain(kept["documents"].as_array().unwrap())
    {
        assert_eq!(s.wait_job(d["job_id"].as_str().unwrap())["status"], "done");
    }
    let question = json!({"collection": "gone", "question": "When does the night ferry leave?", "stream": false});
    let (st, first) = s.post_json("/v1/ask", &question);
    assert_eq!(st, 200, "{first}");
    let (st, conv) = s.post_json(
        "/v1/ask",
        &json!({"collection": "gone", "question": "When does the night ferry leave?", "stream": false, "conversation": true}),
    );
    assert_eq!(st, 200, "{conv}");
    assert_eq!(st, 200, "{first}");
    assert!(
        first["answer"].as_str().unwrap().contains("eleven"),
        "{first}"
    );
    let conversation = conv["meta"]["conversation_id"]
        .as_str()
        .unwrap()
        .to_string();
    let ferry_id = up["documents"][0]["document_id"]
        .as_str()
        .unwrap()
        .to_string();
    let shard = s.data_dir.join("index/gone");
    assert!(shard.exists());

    assert_eq!(s.delete("/v1/collections/gone"), 204);
    assert_eq!(s.get("/v1/collections/gone").0, 404);
    assert_eq!(s.get("/v1/collections/gone/documents").0, 404);
    assert_eq!(s.get(&format!("/v1/documents/{ferry_id}")).0, 404);
    assert_eq!(s.get(&format!("/v1/conversations/{conversation}")).0, 404);
    let (st, _) = s.post_json(
        "/v1/search",
        &json!({"collection": "gone", "query": "ferry"}),
    );
    assert_eq!(st, 404);
    assert!(!shard.exists(), "the index directory is still there");
    let (_, list) = s.get("/v1/collections");
    let names: Vec<&str> = list["collections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["kept"]);
    assert_eq!(s.search("kept", "dock crane", 1)[0]["doc_name"], "dock.md");
    assert_eq!(s.delete("/v1/collections/gone"), 404);
    assert_eq!(s.delete("/v1/collections/..bad"), 400);

    // The name again: a document of the same name with other content. Only it is found, and
    // the answer is computed anew, not the deleted collection's cached one.
    let (st, again) = s.upload(
        "gone",
        &[(
            "ferry.md",
            b"# Ferry\n\nThe night ferry was withdrawn last winter.\n".to_vec(),
        )],
    );
    assert_eq!(st, 202, "{again}");
    assert_eq!(again["documents"][0]["version"], 1, "{again}");
    assert_eq!(again["documents"][0]["duplicate"], false);
    s.wait_job(again["documents"][0]["job_id"].as_str().unwrap());
    let (_, detail) = s.get("/v1/collections/gone");
    assert_eq!(detail["documents"], 1, "{detail}");
    assert_eq!(detail["points"], detail["chunks"], "{detail}");
    let hits = s.search("gone", "lighthouse keeper logs crossings", 10);
    assert!(
        hits.iter().all(|h| h["doc_name"] == "ferry.md"),
        "old chunks are back: {hits:?}"
    );
    let (st, second) = s.post_json("/v1/ask", &question);
    assert_eq!(st, 200, "{second}");
    assert_eq!(second["meta"]["cached"], false, "{second}");
    assert!(
        !second["answer"].as_str().unwrap().contains("eleven"),
        "{second}"
    );
}

/// Collections take turns for the job workers: a single upload to one collection is indexed
/// after at most the job in progress of another that has a backlog, not after the whole
/// backlog (one worker here, so the order is plain).
#[test]
fn a_backlog_in_one_collection_does_not_hold_up_another() {
    let s = Server::start_with(&[("KB_JOBS__WORKERS", "1")]);
    let busy: Vec<(String, Vec<u8>)> = (0..3)
        .map(|i| (format!("ledger{i}.md"), note(100 + i, 300)))
        .collect();
    let files: Vec<(&str, Vec<u8>)> = busy.iter().map(|(n, b)| (n.as_str(), b.clone())).collect();
    let (st, up) = s.upload("busy", &files);
    assert_eq!(st, 202, "{up}");
    let (st, quick) = s.upload(
        "quick",
        &[("bell.md", b"# Bell\n\nThe bell rings at noon.\n".to_vec())],
    );
    assert_eq!(st, 202, "{quick}");
    let mut jobs: Vec<String> = up["documents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["job_id"].as_str().unwrap().to_string())
        .collect();
    jobs.push(
        quick["documents"][0]["job_id"]
            .as_str()
            .unwrap()
            .to_string(),
    );
    let mut finished: Vec<Option<Instant>> = vec![None; jobs.len()];
    let deadline = Instant::now() + Duration::from_secs(300);
    while finished.iter().any(Option::is_none) && Instant::now() < deadline {
        for (i, j) in jobs.iter().enumerate() {
            if finished[i].is_none() {
                let (_, row) = s.get(&format!("/v1/jobs/{j}"));
                if row["status"] == "done" {
                    finished[i] = Some(Instant::now());
                }
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let at: Vec<Instant> = finished
        .into_iter()
        .map(|f| f.expect("every job done"))
        .collect();
    // The quick one ran second: after the first ledger, before the other two.
    assert!(
        at[3] < at[1] && at[3] < at[2],
        "the single upload waited for the backlog"
    );
}

/// Upload `files` (name, bytes) to `collection`, each in its own request, all at once.
fn upload_all_at_once(
    base: &str,
    collection: &str,
    files: Vec<(String, Vec<u8>)>,
) -> Vec<(u16, Value)> {
    let threads: Vec<_> = files
        .into_iter()
        .map(|(name, bytes)| {
            let url = format!("{base}/v1/collections/{collection}/documents");
            std::thread::spawn(move || {
                let form = reqwest::blocking::multipart::Form::new().part(
                    "file",
                    reqwest::blocking::multipart::Part::bytes(bytes).file_name(name),
                );
                let r = client(Duration::from_secs(120))
                    .post(url)
                    .multipart(form)
                    .send()
                    .unwrap();
                let st = r.status().as_u16();
                (st, r.json::<Value>().unwrap_or(Value::Null))
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).collect()
}

/// 20 identical uploads at once (into a new collection, then an existing one), 20 different
/// ones beside them, and 10 different contents under one name: no 5xx, exactly one document or
/// version per distinct content, and the index holds exactly the catalog's chunks.
#[test]
fn identical_and_different_uploads_at_once() {
    let s = Server::start();
    let same = b"# Same\n\nEvery copy of this note says the lock opens at six.\n".to_vec();
    let results = upload_all_at_once(&s.base, "twins", vec![("same.md".into(), same.clone()); 20]);
    assert!(results.iter().all(|r| r.0 == 202), "{results:?}");
    let ids: std::collections::BTreeSet<&str> = results
        .iter()
        .map(|r| r.1["documents"][0]["document_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 1, "identical uploads made several documents");
    let fresh = results
        .iter()
        .filter(|r| r.1["documents"][0]["duplicate"] == false)
        .count();
    assert_eq!(fresh, 1, "{results:?}");
    // Into the existing collection: 20 identical (another name) and 20 different at once.
    let mut files: Vec<(String, Vec<u8>)> = vec![("copy.md".into(), note(7, 5)); 20];
    files.extend((0..20).map(|i| (format!("d{i}.md"), note(200 + i, 4 + i % 3))));
    let results = upload_all_at_once(&s.base, "twins", files);
    assert!(results.iter().all(|r| r.0 == 202), "{results:?}");
    // One name, ten contents: ten versions of one document, numbered 1..=10.
    let files = (0..10)
        .map(|i| ("log.md".to_string(), note(300 + i, 3)))
        .collect();
    let results = upload_all_at_once(&s.base, "twins", files);
    assert!(results.iter().all(|r| r.0 == 202), "{results:?}");
    let mut versions: Vec<i64> = results
        .iter()
        .map(|r| r.1["documents"][0]["version"].as_i64().unwrap())
        .collect();
    versions.sort();
    assert_eq!(versions, (1..=10).collect::<Vec<_>>());
    let (_, list) = s.get("/v1/collections/twins/documents");
    for d in list["documents"].as_array().unwrap() {
        s.wait_job(d["job_id"].as_str().unwrap());
    }
    let (_, list) = s.get("/v1/collections/twins/documents");
    let docs = list["documents"].as_array().unwrap();
    assert_eq!(docs.len(), 1 + 1 + 20 + 1, "{list}");
    assert!(docs.iter().all(|d| d["status"] == "ready"), "{list}");
    let (_, c) = s.get("/v1/collections/twins");
    assert_eq!(c["points"], c["chunks"], "{c}");
}
