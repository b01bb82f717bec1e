//! The command line: ingest a directory into a data dir, ask and search it, against the data dir
//! directly and against a running server; config masking; exit codes.

mod common;
use common::*;
use serde_json::Value;
use std::process::{Command, Output};

fn kb(data: &std::path::Path, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kb"));
    scrub_kb_env(&mut cmd);
    cmd.args(args)
        .arg("--data-dir")
        .arg(data)
        .env("KB_MODELS_DIR", models_dir())
        .output()
        .expect("run kb")
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
