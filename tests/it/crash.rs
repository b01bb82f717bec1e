//! Kill -9 the server in the middle of ingestion, start it again on the same data dir: the job
//! resumes and finishes, with no duplicate or orphaned chunks.

use crate::common::*;
use std::time::Duration;

#[test]
fn killed_mid_ingestion_resumes_to_completion() {
    let mut s = Server::start();
    // Small, quick document first: it must survive the crash untouched.
    let (st, up) = s.upload(
        "k",
        &[(
            "first.md",
            b"# First\n\nThe lighthouse lamp is 14 metres above the sea.\n".to_vec(),
        )],
    );
    assert_eq!(st, 202);
    s.wait_job(up["documents"][0]["job_id"].as_str().unwrap());

    let mut long = String::new();
    for i in 0..400 {
        long.push_str(&format!(
            "Paragraph {i}. The ferry timetable for pier {i} lists departures at {} past the hour, and the harbour master logs each crossing.\n\n",
            i % 60
        ));
    }
    let (st, up) = s.upload("k", &[("timetable.txt", long.into_bytes())]);
    assert_eq!(st, 202);
    let job = up["documents"][0]["job_id"].as_str().unwrap().to_string();
    let doc = up["documents"][0]["document_id"]
        .as_str()
        .unwrap()
        .to_string();
    wait_until("embedding under way", Duration::from_secs(120), || {
        let (_, j) = s.get(&format!("/v1/jobs/{job}"));
        assert_ne!(
            j["status"], "done",
            "finished before the kill; make the document longer"
        );
        j["stage"] == "embed" && j["done"].as_i64().unwrap_or(0) > 0
    });
    s.kill9();

    s.start_again();
    let j = s.wait_job(&job);
    assert_eq!(j["status"], "done", "{j}");
    assert_eq!(j["attempts"], 2, "{j}");
    let (_, d) = s.get(&format!("/v1/documents/{doc}"));
    assert_eq!(d["status"], "ready");
    let (_, c) = s.get("/v1/collections/k");
    assert_eq!(c["documents"], 2);
    assert_eq!(
        c["points"], c["chunks"],
        "duplicate or orphaned chunks after resume: {c}"
    );
    let hits = s.search("k", "ferry departures from pier 397", 3);
    assert!(
        hits.iter()
            .any(|h| h["text"].as_str().unwrap().contains("pier 397")),
        "{hits:?}"
    );
    let hits = s.search("k", "how high is the lighthouse lamp", 1);
    assert!(hits[0]["text"].as_str().unwrap().contains("14 metres"));
}

#[test]
fn graceful_stop_mid_ingestion_resumes_instead_of_failing() {
    let mut s = Server::start();
    let mut long = String::new();
    for i in 0..300 {
        long.push_str(&format!(
            "Entry {i}. The observatory logged comet sighting number {i} from the east dome.\n\n"
        ));
    }
    let (st, up) = s.upload("g", &[("log.txt", long.into_bytes())]);
    assert_eq!(st, 202);
    let job = up["documents"][0]["job_id"].as_str().unwrap().to_string();
    wait_until("embedding under way", Duration::from_secs(120), || {
        let (_, j) = s.get(&format!("/v1/jobs/{job}"));
        assert_ne!(
            j["status"], "done",
            "finished before the stop; make the document longer"
        );
        j["stage"] == "embed" && j["done"].as_i64().unwrap_or(0) > 0
    });
    // SIGTERM: the server shuts down while the job runs; the job must not be marked failed.
    s.restart();
    let j = s.wait_job(&job);
    assert_eq!(j["status"], "done", "{j}");
    let (_, c) = s.get("/v1/collections/g");
    assert_eq!(c["points"], c["chunks"], "{c}");
}
