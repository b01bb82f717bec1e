//! Run history (one JSON line per run), comparison with the previous run of the same QA set,
//! and the Markdown report.

use super::{RunRecord, Scores};
use anyhow::Context;
use serde::Serialize;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;

pub fn load_history(path: &Path) -> anyhow::Result<Vec<RunRecord>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    // A line that no longer parses (an older format, a torn write) is skipped, not fatal.
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect())
}

/// The latest earlier run of the same QA set (same bytes) on the same collection.
pub fn previous<'a>(history: &'a [RunRecord], cur: &RunRecord) -> Option<&'a RunRecord> {
    history.iter().rev().find(|r| {
        r.qa_sha256 == cur.qa_sha256 && r.collection == cur.collection && r.run_id != cur.run_id
    })
}

pub fn append(path: &Path, run: &RunRecord) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    // One write of one line: runs appended by concurrent evals do not interleave.
    f.write_all(format!("{}\n", serde_json::to_string(run)?).as_bytes())?;
    Ok(())
}

#[derive(Debug, Clone, Serialize)]
pub struct Delta {
    pub metric: String,
    pub before: f64,
    pub after: f64,
    pub higher_is_better: bool,
    pub regression: bool,
}

fn metrics_of(r: &RunRecord) -> Vec<(String, f64, bool)> {
    let mut out = Vec::new();
    for (mode, m) in &r.modes {
        let s: &Scores = &m.scores;
        for (k, v) in &s.hit {
            out.push((format!("{mode} hit@{k}"), *v, true));
        }
        for (k, v) in &s.any_hit {
            out.push((format!("{mode} any_hit@{k}"), *v, true));
        }
        out.push((format!("{mode} mrr"), s.mrr, true));
    }
    if let Some(a) = &r.answers {
        out.push(("answer accuracy".into(), a.accuracy, true));
        out.push((
            "correct declines (unanswerable)".into(),
            a.decline_rate,
            true,
        ));
        out.push(("false declines (answerable)".into(), a.false_decline, false));
        out.push((
            "unsupported answer sentences".into(),
            a.unsupported_sentences,
            false,
        ));
    }
    out
}

/// Metric by metric changes; a quality metric that got worse by more than `tolerance`
/// (absolute) is a regression. Latency is reported, never judged: machines are noisy.
pub fn compare(prev: &RunRecord, cur: &RunRecord, tolerance: f64) -> Vec<Delta> {
    let before = metrics_of(prev);
    metrics_of(cur)
        .into_iter()
        .filter_map(|(name, after, hib)| {
            let (_, b, _) = before.iter().find(|(n, _, _)| *n == name)?;
            let worse_by = if hib { b - after } else { after - b };
            Some(Delta {
                metric: name,
                before: *b,
                after,
                higher_is_better: hib,
                regression: worse_by > tolerance + 1e-9,
            })
        })
        .collect()
}

fn f3(x: f64) -> String {
    format!("{x:.3}")
}

/// The Markdown report of a run (and of its comparison with the previous one).
pub fn markdown(run: &RunRecord, prev: Option<&RunRecord>, deltas: &[Delta]) -> String {
    let mut s = String::new();
    let c = &run.config;
    let _ = writeln!(s, "# kb eval {}\n", run.run_id);
    let any = run.modes.values().next();
    let (na, nu) = any
        .map(|m| (m.scores.answerable, m.scores.unanswerable))
        .unwrap_or((0, 0));
    let _ = writeln!(
        s,
        "- QA set: `{}` (sha256 {}…), {} items: {na} answerable, {nu} unanswerable",
        run.qa_file,
        &run.qa_sha256[..12],
        run.items
    );
    let _ = writeln!(s, "- collection `{}` on {}", run.collection, run.target);
    let _ = writeln!(
        s,
        "- kb {} (commit {}), embedder `{}`, chunks {} tokens (0 = embedder max) with {} overlap",
        c["kb_version"].as_str().unwrap_or("?"),
        c["git_commit"].as_str().unwrap_or("?"),
        c["embedder"].as_str().unwrap_or("?"),
        c["chunker"]["max_tokens"],
        c["chunker"]["overlap_tokens"],
    );
    let _ = writeln!(
        s,
        "- retrieval: answers use `{}` with top_k {} from {} candidates; answerer `{}`, prompt `{}`\n",
        c["retrieval"]["mode"].as_str().unwrap_or("?"),
        c["retrieval"]["top_k"],
        c["retrieval"]["candidates"],
        c["answerer"].as_str().unwrap_or("?"),
        c["prompt_version"].as_str().unwrap_or("?"),
    );

    let _ = writeln!(s, "## Retrieval (answerable items)\n");
    let names: Vec<&String> = run.modes.keys().collect();
    let _ = writeln!(
        s,
        "| metric | {} |\n|---|{}",
        names
            .iter()
            .map(|n| n.as_str())
            .collect::<Vec<_>>()
            .join(" | "),
        "---:|".repeat(names.len())
    );
    let row = |s: &mut String, label: String, f: &dyn Fn(&super::ModeSummary) -> String| {
        let _ = writeln!(
            s,
            "| {label} | {} |",
            run.modes.values().map(f).collect::<Vec<_>>().join(" | ")
        );
    };
    for &k in &run.ks {
        row(&mut s, format!("hit@{k}"), &|m| f3(m.scores.hit[&k]));
    }
    for &k in &run.ks {
        row(
            &mut s,
            format!("any_hit@{k}"),
            &|m| f3(m.scores.any_hit[&k]),
        );
    }
    row(&mut s, "MRR".into(), &|m| f3(m.scores.mrr));
    row(&mut s, "retrieval p50 / p95 ms".into(), &|m| {
        format!("{:.1} / {:.1}", m.retrieve_ms.p50, m.retrieve_ms.p95)
    });

    if let Some(a) = &run.answers {
        let _ = writeln!(s, "\n## Answers (retrieval `{}`)\n", a.mode);
        let _ = writeln!(s, "| metric | value |\n|---|---:|");
        for (label, value) in [
            ("accuracy (answerable)", a.accuracy),
            ("correct declines (unanswerable)", a.decline_rate),
            ("false declines (answerable)", a.false_decline),
            (
                "unsupported sentences (no support in cited sources)",
                a.unsupported_sentences,
            ),
            (
                "answers with an unsupported sentence",
                a.answers_with_unsupported,
            ),
            ("generated answers replaced by the guard", a.guard_replaced),
        ] {
            let _ = writeln!(s, "| {label} | {} |", f3(value));
        }
        let _ = writeln!(
            s,
            "| answer p50 / p95 ms | {:.1} / {:.1} |",
            a.answer_ms.p50, a.answer_ms.p95
        );
        let _ = writeln!(
            s,
            "| first token p50 / p95 ms | {:.1} / {:.1} |",
            a.first_token_ms.p50, a.first_token_ms.p95
        );
        let _ = writeln!(
            s,
            "| tokens in / out | {} / {} |",
            a.prompt_tokens, a.completion_tokens
        );
        let _ = writeln!(s, "| cost USD | {:.4} |", a.cost_usd);
        let _ = writeln!(s, "| failed asks | {} |", a.errors);
    }

    let key = run
        .answers
        .as_ref()
        .map(|a| a.mode.clone())
        .filter(|m| run.modes.contains_key(m))
        .or_else(|| run.modes.keys().next().cloned());
    if let Some(m) = key.and_then(|k| run.modes.get(&k).map(|m| (k, m))) {
        let _ = writeln!(s, "\n## Per type (retrieval `{}`)\n", m.0);
        let _ = writeln!(
            s,
            "| type | n | accuracy | {} |\n|---|---:|---:|{}",
            run.ks
                .iter()
                .map(|k| format!("hit@{k}"))
                .collect::<Vec<_>>()
                .join(" | "),
            "---:|".repeat(run.ks.len())
        );
        for (t, ts) in &m.1.scores.per_type {
            let _ = writeln!(
                s,
                "| {t} | {} | {} | {} |",
                ts.n,
                f3(ts.accuracy),
                run.ks
                    .iter()
                    .map(|k| ts.hit.get(k).map(|v| f3(*v)).unwrap_or_else(|| "-".into()))
                    .collect::<Vec<_>>()
                    .join(" | ")
            );
        }
    }

    match prev {
        None => {
            let _ = writeln!(
                s,
                "\n## Against the previous run\n\nNo earlier run of this set on this collection."
            );
        }
        Some(p) => {
            let _ = writeln!(
                s,
                "\n## Against the previous run ({}, commit {})\n",
                p.run_id,
                p.config["git_commit"].as_str().unwrap_or("?")
            );
            let changed: Vec<&Delta> = deltas
                .iter()
                .filter(|d| (d.after - d.before).abs() > 1e-9)
                .collect();
            if changed.is_empty() {
                let _ = writeln!(s, "No metric changed.");
            } else {
                let _ = writeln!(
                    s,
                    "| metric | before | now | change | |\n|---|---:|---:|---:|---|"
                );
                for d in changed {
                    let better = (d.after > d.before) == d.higher_is_better;
                    let _ = writeln!(
                        s,
                        "| {} | {} | {} | {:+.3} | {} |",
                        d.metric,
                        f3(d.before),
                        f3(d.after),
                        d.after - d.before,
                        if d.regression {
                            "REGRESSION"
                        } else if better {
                            "better"
                        } else {
                            "worse, within tolerance"
                        }
                    );
                }
            }
        }
    }
    s
}
