//! `kb eval` on a fixture set whose answers are known: its numbers agree with the reference
//! scorer (`score.py`) on the same results, runs are stored and compared, a worse run is a
//! regression (exit code 3), and a run through a server scores the same as one in-process.

use crate::common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixtures() -> PathBuf {
    root().join("tests/fixtures/eval")
}

fn kb(data: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kb"));
    scrub_kb_env(&mut cmd);
    cmd.args(args)
        .arg("--data-dir")
        .arg(data)
        .env("KB_MODELS_DIR", models_dir())
        .output()
        .expect("run kb")
}

fn ingest(data: &Path, docs: &[&str]) {
    let paths: Vec<String> = docs
        .iter()
        .map(|d| fixtures().join("docs").join(d).display().to_string())
        .collect();
    let mut args = vec!["ingest", "--collection", "fx"];
    args.extend(paths.iter().map(|s| s.as_str()));
    let out = kb(data, &args);
    assert!(
        out.status.success(),
        "ingest failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn eval(data: &Path, out: &Path, history: &Path, extra: &[&str]) -> (Option<i32>, String, Value) {
    let qa = fixtures().join("qa.jsonl");
    let mut args = vec![
        "eval",
        "--qa",
        qa.to_str().unwrap(),
        "--collection",
        "fx",
        "--k",
        "1,3,5",
        "--out",
        out.to_str().unwrap(),
        "--history",
        history.to_str().unwrap(),
        "--fail-on-regression",
    ];
    args.extend_from_slice(extra);
    let o = kb(data, &args);
    let stdout = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        matches!(o.status.code(), Some(0) | Some(3)),
        "eval failed: {stdout}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let summary: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    (o.status.code(), stdout, summary)
}

/// The reference scorer's numbers for a results file: name -> value.
fn reference(results: &Path) -> Vec<(String, f64)> {
    let o = Command::new("python3")
        .arg(fixtures().join("score.py"))
        .arg(results)
        .arg("--qa")
        .arg(fixtures().join("qa.jsonl"))
        .arg("--k")
        .arg("1,3,5")
        .output()
        .expect("python3 runs score.py");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = String::from_utf8_lossy(&o.stdout).to_string();
    let mut out = Vec::new();
    for line in text.lines() {
        // "hit@1: 0.412   any_hit@1: 0.510" and "answer accuracy (answerable): 0.549"
        let parts: Vec<&str> = line.split("   ").collect();
        for p in parts {
            if let Some((name, v)) = p.rsplit_once(": ") {
                if let Ok(v) = v.trim().parse::<f64>() {
                    out.push((name.trim().to_string(), v));
                }
            }
        }
    }
    out
}

fn check_against_reference(summary: &Value, out: &Path) {
    let run = &summary["run"];
    for mode in ["hybrid", "dense", "sparse"] {
        let ours = &run["modes"][mode]["scores"];
        let theirs = reference(&out.join(format!("results-{mode}.jsonl")));
        let get = |name: &str| {
            theirs
                .iter()
                .find(|(n, _)| n == name)
                .unwrap_or_else(|| panic!("score.py printed no {name}: {theirs:?}"))
                .1
        };
        for k in ["1", "3", "5"] {
            let h = ours["hit"][k].as_f64().unwrap();
            let a = ours["any_hit"][k].as_f64().unwrap();
            assert!(
                (h - get(&format!("hit@{k}"))).abs() < 6e-4,
                "{mode} hit@{k}: {h} vs {theirs:?}"
            );
            assert!(
                (a - get(&format!("any_hit@{k}"))).abs() < 6e-4,
                "{mode} any_hit@{k}: {a}"
            );
        }
        let pairs = [
            ("accuracy", "answer accuracy (answerable)"),
            ("false_decline", "false decline rate (answerable)"),
            ("decline_rate", "decline rate (unanswerable)"),
        ];
        for (ours_name, ref_name) in pairs {
            let v = ours[ours_name].as_f64().unwrap();
            assert!(
                (v - get(ref_name)).abs() < 6e-4,
                "{mode} {ours_name}: {v} vs {}",
                get(ref_name)
            );
        }
    }
}

#[test]
fn eval_scores_like_the_reference_stores_runs_and_flags_regressions() {
    let tmp = tempfile::tempdir().unwrap();
    let full = tmp.path().join("full");
    let partial = tmp.path().join("partial");
    let history = tmp.path().join("runs/history.jsonl");
    ingest(&full, &["lighthouse.md", "bakery.md", "observatory.md"]);
    // The same collection without the observatory guide: its items lose their evidence.
    ingest(&partial, &["lighthouse.md", "bakery.md"]);

    // First run: nothing to compare with.
    let out1 = tmp.path().join("run1");
    let (code, stdout, s1) = eval(&full, &out1, &history, &[]);
    assert_eq!(code, Some(0), "{stdout}");
    assert!(stdout.contains("No earlier run"), "{stdout}");
    check_against_reference(&s1, &out1);
    let hybrid = &s1["run"]["modes"]["hybrid"]["scores"];
    assert_eq!(hybrid["answerable"], 7);
    assert_eq!(hybrid["unanswerable"], 2);
    // A tiny corpus with distinctive evidence: every answerable item is found in the top 5.
    assert_eq!(hybrid["hit"]["5"].as_f64(), Some(1.0), "{stdout}");
    assert!(hybrid["mrr"].as_f64().unwrap() > 0.5, "{stdout}");
    assert_eq!(s1["run"]["items"], 9);
    assert!(s1["run"]["config"]["git_commit"].as_str().is_some());
    assert_eq!(s1["run"]["config"]["embedder"], "local:all-MiniLM-L6-v2");

    // Per-item results: the format score.py reads, plus ids, scores and the verdict.
    let lines = std::fs::read_to_string(out1.join("results-hybrid.jsonl")).unwrap();
    let rows: Vec<Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 9);
    for r in &rows {
        assert!(r["retrieved"]
            .as_array()
            .is_some_and(|a| !a.is_empty() && a.len() <= 5));
        assert_eq!(
            r["chunk_ids"].as_array().unwrap().len(),
            r["retrieved"].as_array().unwrap().len()
        );
        assert!(r["answer"].is_string() && r["declined"].is_boolean(), "{r}");
        assert!(r["verdict"]["correct"].is_boolean());
    }
    // Both unanswerable items ask about things the documents never name: declined, with why.
    assert_eq!(hybrid["decline_rate"].as_f64(), Some(1.0), "{stdout}");
    let fx08 = rows.iter().find(|r| r["id"] == "fx08").unwrap();
    assert_eq!(fx08["declined"], true, "{fx08}");
    let unknown = fx08["grounding"]["unknown_terms"].as_array().unwrap();
    assert!(unknown.iter().any(|t| t == "tidewater"), "{fx08}");
    let fx01 = rows.iter().find(|r| r["id"] == "fx01").unwrap();
    assert!(fx01["retrieved"][0].as_str().unwrap().contains("16:20"));
    assert!(out1.join("report.md").exists());

    // Second run without the observatory: worse, and flagged.
    let out2 = tmp.path().join("run2");
    let (code, stdout, s2) = eval(&partial, &out2, &history, &[]);
    assert_eq!(code, Some(3), "a worse run must exit 3: {stdout}");
    assert!(stdout.contains("REGRESSION"), "{stdout}");
    assert!(stdout.contains("hybrid hit@5"), "{stdout}");
    check_against_reference(&s2, &out2);
    assert!(
        s2["run"]["modes"]["hybrid"]["scores"]["hit"]["5"]
            .as_f64()
            .unwrap()
            < 1.0
    );
    assert_eq!(s2["previous"], s1["run"]["run_id"]);

    // Without --fail-on-regression the same comparison reports but exits 0.
    let qa = fixtures().join("qa.jsonl");
    let o = kb(
        &partial,
        &[
            "eval",
            "--qa",
            qa.to_str().unwrap(),
            "-c",
            "fx",
            "--no-answers",
            "--modes",
            "hybrid",
            "--out",
            tmp.path().join("run3").to_str().unwrap(),
            "--history",
            history.to_str().unwrap(),
        ],
    );
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );

    // Back to the full collection, through a server this time: better than the previous run,
    // so no regression; and the same scores as the in-process run.
    let mut server = Server::start();
    let up = server.upload(
        "fx",
        &["lighthouse.md", "bakery.md", "observatory.md"]
            .iter()
            .map(|n| (*n, std::fs::read(fixtures().join("docs").join(n)).unwrap()))
            .collect::<Vec<_>>(),
    );
    assert_eq!(up.0, 202, "{}", up.1);
    for d in up.1["documents"].as_array().unwrap() {
        let job = server.wait_job(d["job_id"].as_str().unwrap());
        assert_eq!(job["status"], "done", "{job}");
    }
    let out4 = tmp.path().join("run4");
    let (code, stdout, s4) = eval(&full, &out4, &history, &["--server", &server.base]);
    assert_eq!(code, Some(0), "{stdout}");
    assert!(stdout.contains("better"), "{stdout}");
    check_against_reference(&s4, &out4);
    for mode in ["hybrid", "dense", "sparse"] {
        let a = &s1["run"]["modes"][mode]["scores"];
        let b = &s4["run"]["modes"][mode]["scores"];
        assert_eq!(
            a["hit"], b["hit"],
            "{mode}: in-process and server runs differ"
        );
        assert_eq!(a["accuracy"], b["accuracy"], "{mode}");
    }
    assert_eq!(s4["run"]["target"], server.base.as_str());
    let history_lines = std::fs::read_to_string(&history).unwrap();
    assert_eq!(history_lines.lines().count(), 4);
    server.stop();
}

#[test]
fn eval_rejects_a_bad_qa_file_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let qa = tmp.path().join("bad.jsonl");
    std::fs::write(&qa, "{\"id\": \"x\"}\n").unwrap();
    let o = kb(
        &data,
        &[
            "eval",
            "--qa",
            qa.to_str().unwrap(),
            "-c",
            "fx",
            "--out",
            tmp.path().join("o").to_str().unwrap(),
        ],
    );
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("QA line 1"), "{err}");
}
