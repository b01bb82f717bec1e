//! The command line: ingest a directory into a data dir, ask and search it, against the data dir
//! directly and against a running server; config masking; exit codes.

use crate::common::*;
use serde_json::Value;
use std::process::{Command, Output};

fn kb(data: &std::path::Path, args: &[&str]) -> Output {
    kb_cli(data, args)
}

#[test]
fn ingest_ask_search_config() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let docs = tmp.path().join("docs");
    std::fs::create_dir_all(docs.join("sub")).unwrap();
    std::fs::write(
        docs.join("tides.md"),
        "# Tides\n\nHigh tide at the north jetty comes at 06:40.\n",
    )
    .unwrap();
    std::fs::write(
        docs.join("sub/bells.txt"),
        "The chapel bell rings nine times at dusk.\n",
    )
    .unwrap();
    std::fs::write(docs.join("sub/broken.txt"), b"\xff\xfe\x00bin").unwrap();
    std::fs::write(docs.join(".hidden.txt"), "secret").unwrap();

    let out = kb(
        &data,
        &["ingest", "--collection", "cli", docs.to_str().unwrap()],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(3),
        "a rejected file makes exit code 3: {err}"
    );
    assert!(err.contains("broken.txt"), "{err}");
    assert!(err.contains("indexed 2 file(s)"), "{err}");

    let out = kb(
        &data,
        &[
            "ask",
            "--collection",
            "cli",
            "How many times does the chapel bell ring?",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("nine times"), "{text}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("sub › bells.txt"));

    let out = kb(
        &data,
        &[
            "ask",
            "--collection",
            "cli",
            "What is the airspeed of an unladen swallow?",
        ],
    );
    assert_eq!(out.status.code(), Some(4), "a declined answer exits 4");

    let out = kb(
        &data,
        &[
            "search",
            "--collection",
            "cli",
            "--json",
            "north jetty high tide",
        ],
    );
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["doc_name"], "tides.md");

    let bare = || {
        let mut c = Command::new(env!("CARGO_BIN_EXE_kb"));
        scrub_kb_env(&mut c);
        c
    };
    let out = bare()
        .args(["config"])
        .env("KB_LLM__API_KEY", "sk-very-secret")
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        !shown.contains("sk-very-secret") && shown.contains("********"),
        "{shown}"
    );
    let out = bare()
        .args(["config"])
        .env("KB_RETRIEVAL__TOPKAY", "3")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "unknown keys are errors");

    // Against a running server, which holds the data dir lock.
    let s = Server::start();
    let out = kb(&s.data_dir, &["ask", "anything"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("in use by another kb process"));
    let out = kb(
        tmp.path(),
        &[
            "ingest",
            "--collection",
            "srv",
            "--server",
            &s.base,
            docs.join("tides.md").to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = kb(
        tmp.path(),
        &[
            "ask",
            "--collection",
            "srv",
            "--server",
            &s.base,
            "When is high tide at the north jetty?",
        ],
    );
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("06:40"));
}

fn ids_by_name(out: &Output) -> Vec<(String, String)> {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("docs list --json prints JSON");
    let mut docs: Vec<(String, String)> = v["documents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            assert_eq!(d["status"], "ready", "{d}");
            (
                d["name"].as_str().unwrap().to_string(),
                d["id"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    docs.sort();
    docs
}

#[test]
fn docs_list_and_delete() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let docs = tmp.path().join("docs");
    std::fs::create_dir_all(&docs).unwrap();
    std::fs::write(
        docs.join("ferry.md"),
        "# Ferry\n\nThe first ferry to the island leaves at 07:15.\n",
    )
    .unwrap();
    std::fs::write(
        docs.join("market.txt"),
        "The fish market opens on Saturdays at dawn.\n",
    )
    .unwrap();
    let out = kb(&data, &["ingest", "-c", "town", docs.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The data dir directly.
    let listed = ids_by_name(&kb(&data, &["docs", "list", "-c", "town", "--json"]));
    let names: Vec<&str> = listed.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["ferry.md", "market.txt"]);
    let out = kb(&data, &["docs", "list", "--collection", "town"]);
    assert!(out.status.success());
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.starts_with("ID "), "{table}");
    for (name, id) in &listed {
        let line = table.lines().find(|l| l.contains(name.as_str())).unwrap();
        assert!(
            line.starts_with(id.as_str()) && line.contains("ready"),
            "{line}"
        );
    }

    let ferry = &listed[0].1;
    let out = kb(&data, &["docs", "delete", ferry]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let after = ids_by_name(&kb(&data, &["docs", "list", "-c", "town", "--json"]));
    assert_eq!(after, listed[1..].to_vec());
    // Its chunks left the index too: the ferry question finds nothing of it.
    let out = kb(
        &data,
        &["search", "-c", "town", "--json", "first ferry island"],
    );
    let hits: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        hits.as_array()
            .unwrap()
            .iter()
            .all(|h| h["doc_name"] != "ferry.md"),
        "{hits}"
    );
    let out = kb(&data, &["docs", "delete", ferry]);
    assert_eq!(out.status.code(), Some(5), "no such document exits 5");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no document"));
    let out = kb(&data, &["docs", "list", "-c", "nowhere"]);
    assert_eq!(out.status.code(), Some(5), "no such collection exits 5");

    let out = kb(&data, &["docs", "--help"]);
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("list") && help.contains("delete") && help.contains("Exit codes"));

    // Against a running server.
    let s = Server::start();
    let out = kb(&s.data_dir, &["docs", "list"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "the data dir is locked by the server"
    );
    let out = kb(
        tmp.path(),
        &[
            "ingest",
            "-c",
            "srv",
            "--server",
            &s.base,
            docs.to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed = ids_by_name(&kb(
        tmp.path(),
        &["docs", "list", "-c", "srv", "--json", "--server", &s.base],
    ));
    assert_eq!(listed.len(), 2);
    let market = &listed[1].1;
    let out = kb(tmp.path(), &["docs", "delete", market, "--server", &s.base]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (st, _) = s.get(&format!("/v1/documents/{market}"));
    assert_eq!(st, 404);
    let out = kb(tmp.path(), &["docs", "delete", market, "--server", &s.base]);
    assert_eq!(out.status.code(), Some(5));
    let out = kb(
        tmp.path(),
        &["docs", "list", "-c", "nowhere", "--server", &s.base],
    );
    assert_eq!(out.status.code(), Some(5));
    let out = kb(
        tmp.path(),
        &["docs", "list", "--server", "http://127.0.0.1:9"],
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "an unreachable server is an error"
    );
}

/// A log that goes to a file, not a terminal, carries no ANSI colour codes.
#[test]
fn log_file_has_no_colour_codes() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("serve.log");
    // An empty NO_COLOR counts as unset (no-color.org): only "not a terminal" can turn colour off.
    let mut s = Server::start_logging_to(&[("KB_LOG", "info"), ("NO_COLOR", "")], &log);
    s.stop();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("kb listening") && text.contains("index flushed"),
        "kb serve logs at info: {text}"
    );
    assert!(!text.contains("\x1b["), "colour codes in the log: {text:?}");
}

/// `kb ask --server` reassembles an answer whose bytes arrive cut anywhere: inside a UTF-8
/// character, inside an event. The server here is scripted, writing its pieces 100 ms apart so
/// that each reaches the client as a chunk of its own.
#[test]
fn ask_server_reassembles_split_characters() {
    use axum::{body::Body, response::Response, routing::post, Router};
    use futures::StreamExt;
    const PIECES: &[&[u8]] = &[
        // "è" is C3 A8, "—" E2 80 94, "€" E2 82 AC.
        b": keep-alive\n\nevent: meta\ndata: {}\n\nevent: token\ndata: {\"text\":\"Cr\xc3",
        b"\xa8me br\xc3\xbbl\xc3\xa9e\"}\n\nevent: tok",
        b"en\ndata: {\"text\":\" \xe2\x80",
        b"\x94 5 \xe2",
        b"\x82\xac\"}\n\nevent: sources\ndata: []\n\nevent: done\ndata: {\"declined\":false}\n\n",
    ];
    let app = Router::new().route(
        "/v1/ask",
        post(|| async {
            let body = futures::stream::iter(PIECES).then(|p| async move {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                Ok::<_, std::convert::Infallible>(bytes::Bytes::from_static(p))
            });
            Response::builder()
                .header("content-type", "text/event-stream")
                .body(Body::from_stream(body))
                .unwrap()
        }),
    );
    let base = serve_upstream(app);
    let base = base.strip_suffix("/v1").unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = kb(tmp.path(), &["ask", "--server", base, "dessert?"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "Crème brûlée — 5 €\n");
}

/// A running server's answer, through `kb ask --server`, is what `kb ask` prints on the same
/// data dir, multi-byte characters included.
#[test]
fn ask_server_prints_the_in_process_answer() {
    let tmp = tempfile::tempdir().unwrap();
    let docs = tmp.path().join("docs");
    std::fs::create_dir_all(&docs).unwrap();
    std::fs::write(
        docs.join("café.md"),
        "# Café\n\nThe café by the quay opens at 07:15 — its crème brûlée costs 5 €.\n",
    )
    .unwrap();
    let question = "When does the café by the quay open?";
    let mut s = Server::start();
    let out = kb(
        tmp.path(),
        &["ingest", "--server", &s.base, docs.to_str().unwrap()],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let remote = kb(tmp.path(), &["ask", "--server", &s.base, question]);
    s.stop();
    let local = kb(&s.data_dir, &["ask", question]);
    assert!(
        remote.status.success() && local.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&remote.stderr),
        String::from_utf8_lossy(&local.stderr)
    );
    let answer = String::from_utf8(local.stdout).unwrap();
    assert!(
        answer.contains("07:15 — its crème brûlée costs 5 €"),
        "{answer}"
    );
    assert_eq!(String::from_utf8(remote.stdout).unwrap(), answer);
}

/// A SIGTERM the moment `kb serve` says it listens is a graceful stop (exit 0, index flushed),
/// never the default action of the signal: the handlers are in place before the line.
#[test]
fn sigterm_right_after_listening_is_a_graceful_stop() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    for _ in 0..5 {
        let tmp = tempfile::tempdir().unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kb"));
        cmd.args(["serve", "--addr", "127.0.0.1:0", "--data-dir"])
            .arg(tmp.path().join("data"))
            .current_dir(tmp.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        scrub_kb_env(&mut cmd);
        cmd.env("KB_MODELS_DIR", models_dir());
        let mut child = cmd.spawn().expect("start kb serve");
        let mut first = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut first)
            .unwrap();
        assert!(first.starts_with("kb listening on "), "{first}");
        // SAFETY: a plain kill(2) of our own child.
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        let status = child.wait().unwrap();
        assert!(status.success(), "SIGTERM right after start: {status:?}");
    }
}
