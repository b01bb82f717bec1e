//! `kb eval`: run a QA set through the same retrieval and answering path as `/v1/ask`, score it
//! (see [`score`]), store the run with its configuration, compare it with the previous run of
//! the same set, and write per-item results and a Markdown report.

pub mod report;
pub mod score;

use crate::query::{AskEvent, AskParams, SearchParams};
use crate::store::SearchMode;
use crate::Core;
use anyhow::Context;
use futures::StreamExt;
use score::{Outcome, Scores, Verdict};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

/// A retrieved chunk.
#[derive(Debug, Clone, Serialize)]
pub struct Hit {
    pub chunk_id: String,
    pub doc_name: String,
    pub score: f32,
    pub text: String,
}

/// An answer and what it cost.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Answer {
    pub answer: String,
    pub declined: bool,
    pub answerer: String,
    pub citations: Vec<usize>,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cost_usd: f64,
    pub total_ms: f64,
    pub first_token_ms: Option<f64>,
    pub error: Option<String>,
    /// The answerer's evidence (coverage, missing terms, why it declined), when it gives one.
    pub grounding: Option<Value>,
    /// What the grounding guard did with a generated answer (`passed`, `fallback_extractive`...).
    pub guard_action: Option<String>,
    /// Sentences of the delivered answer judged, and those without support in the sources
    /// they cite (the guard's lexical test at `SUPPORT_THRESHOLD`, whatever the answerer).
    pub sentences_checked: usize,
    pub unsupported: Vec<String>,
}

/// The share of a sentence's content words its cited sources must hold for the evaluation to
/// count it as supported (kb's default `llm.guard_min_support`).
pub const SUPPORT_THRESHOLD: f64 = 0.6;

impl Answer {
    fn judge_support(&mut self, sources: &[crate::query::Source]) {
        if self.declined || self.answer.is_empty() {
            return;
        }
        let (checked, unsupported) =
            crate::query::guard::check(&self.answer, sources, SUPPORT_THRESHOLD);
        self.sentences_checked = checked;
        self.unsupported = unsupported;
    }
}

/// Where questions go: this process (the data directory opened in place) or a kb server.
#[async_trait::async_trait]
pub trait Target: Send + Sync {
    async fn describe(&self) -> anyhow::Result<Value>;
    /// The configured retrieval mode, which answers use.
    async fn answer_mode(&self) -> anyhow::Result<SearchMode>;
    async fn search(
        &self,
        collection: &str,
        query: &str,
        k: usize,
        mode: SearchMode,
    ) -> anyhow::Result<Vec<Hit>>;
    async fn ask(&self, collection: &str, question: &str) -> anyhow::Result<Answer>;
}

pub struct LocalTarget(pub Arc<Core>);

#[async_trait::async_trait]
impl Target for LocalTarget {
    async fn describe(&self) -> anyhow::Result<Value> {
        Ok(serde_json::to_value(self.0.describe())?)
    }

    async fn answer_mode(&self) -> anyhow::Result<SearchMode> {
        Ok(self.0.config.retrieval.mode)
    }

    async fn search(
        &self,
        collection: &str,
        query: &str,
        k: usize,
        mode: SearchMode,
    ) -> anyhow::Result<Vec<Hit>> {
        let hits = self
            .0
            .query
            .search(&SearchParams {
                collection: collection.into(),
                query: query.into(),
                top_k: k,
                mode,
                doc_ids: None,
            })
            .await?;
        Ok(hits
            .into_iter()
            .map(|s| Hit {
                chunk_id: s.chunk_id,
                doc_name: s.doc_name,
                score: s.score,
                text: s.text,
            })
            .collect())
    }

    async fn ask(&self, collection: &str, question: &str) -> anyhow::Result<Answer> {
        let cfg = &self.0.config;
        let started = Instant::now();
        let mut events = self.0.query.ask(AskParams {
            search: SearchParams {
                collection: collection.into(),
                query: question.into(),
                top_k: cfg.retrieval.top_k,
                mode: cfg.retrieval.mode,
                doc_ids: None,
            },
            request_id: uuid::Uuid::new_v4().to_string(),
            conversation_id: None,
            // An evaluation measures answering, not the cache.
            use_cache: false,
            key_id: None,
        });
        let mut out = Answer::default();
        let mut sources = Vec::new();
        while let Some(ev) = events.next().await {
            match ev {
                AskEvent::Sources(s) => sources = s,
                AskEvent::Token(_) if out.first_token_ms.is_none() => {
                    out.first_token_ms = Some(started.elapsed().as_secs_f64() * 1e3);
                }
                AskEvent::Done(d) => {
                    out.answer = d.answer;
                    out.declined = d.declined;
                    out.answerer = d.answerer;
                    out.citations = d.citations;
                    out.prompt_tokens = d.usage.prompt_tokens;
                    out.completion_tokens = d.usage.completion_tokens;
                    out.cost_usd = d.usage.cost_usd;
                    out.grounding = d
                        .grounding
                        .as_ref()
                        .and_then(|g| serde_json::to_value(g).ok());
                    out.guard_action = d.guard.as_ref().map(|g| g.action.clone());
                }
                AskEvent::Error(e) => {
                    out.error = Some(e.to_string());
                }
                _ => {}
            }
        }
        out.total_ms = started.elapsed().as_secs_f64() * 1e3;
        out.judge_support(&sources);
        Ok(out)
    }
}

pub struct RemoteTarget {
    base: String,
    http: reqwest::Client,
}

impl RemoteTarget {
    pub fn new(base: &str) -> RemoteTarget {
        RemoteTarget {
            base: base.trim_end_matches('/').to_string(),
            http: reqwest::Client::new(),
        }
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("cannot reach kb at {}", self.base))?;
        let status = resp.status();
        let v: Value = resp.json().await.unwrap_or_default();
        if !status.is_success() {
            anyhow::bail!(
                "{path}: {status}: {}",
                v["error"]["message"].as_str().unwrap_or("request failed")
            );
        }
        Ok(v)
    }
}

#[async_trait::async_trait]
impl Target for RemoteTarget {
    async fn describe(&self) -> anyhow::Result<Value> {
        self.call(reqwest::Method::GET, "/v1/info", None).await
    }

    async fn answer_mode(&self) -> anyhow::Result<SearchMode> {
        let info = self.describe().await?;
        SearchMode::parse(info["retrieval"]["mode"].as_str().unwrap_or("hybrid"))
    }

    async fn search(
        &self,
        collection: &str,
        query: &str,
        k: usize,
        mode: SearchMode,
    ) -> anyhow::Result<Vec<Hit>> {
        let v = self
            .call(
                reqwest::Method::POST,
                "/v1/search",
                Some(json!({"collection": collection, "query": query, "top_k": k, "mode": mode_name(mode)})),
            )
            .await?;
        Ok(v["results"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|h| Hit {
                chunk_id: h["chunk_id"].as_str().unwrap_or("").into(),
                doc_name: h["doc_name"].as_str().unwrap_or("").into(),
                score: h["score"].as_f64().unwrap_or(0.0) as f32,
                text: h["text"].as_str().unwrap_or("").into(),
            })
            .collect())
    }

    async fn ask(&self, collection: &str, question: &str) -> anyhow::Result<Answer> {
        let started = Instant::now();
        let r = self
            .call(
                reqwest::Method::POST,
                "/v1/ask",
                Some(json!({"collection": collection, "question": question, "stream": false, "cache": false})),
            )
            .await;
        let total_ms = started.elapsed().as_secs_f64() * 1e3;
        let v = match r {
            Ok(v) => v,
            Err(e) => {
                return Ok(Answer {
                    error: Some(e.to_string()),
                    total_ms,
                    ..Default::default()
                })
            }
        };
        let sources: Vec<crate::query::Source> =
            serde_json::from_value(v["sources"].clone()).unwrap_or_default();
        let mut a = Answer {
            answer: v["answer"].as_str().unwrap_or("").into(),
            declined: v["declined"].as_bool().unwrap_or(false),
            answerer: v["answerer"].as_str().unwrap_or("").into(),
            citations: v["citations"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_u64().map(|x| x as usize))
                        .collect()
                })
                .unwrap_or_default(),
            prompt_tokens: v["usage"]["prompt_tokens"].as_u64().unwrap_or(0),
            completion_tokens: v["usage"]["completion_tokens"].as_u64().unwrap_or(0),
            cost_usd: v["usage"]["cost_usd"].as_f64().unwrap_or(0.0),
            first_token_ms: v["timings_ms"]["first_token"].as_f64(),
            total_ms,
            error: None,
            grounding: v.get("grounding").cloned(),
            guard_action: v["guard"]["action"].as_str().map(String::from),
            ..Default::default()
        };
        a.judge_support(&sources);
        Ok(a)
    }
}

/// A fresh run id: UTC time plus a short random suffix (sorts by time).
pub fn new_run_id() -> String {
    format!(
        "{}-{}",
        chrono::Utc::now().format("%Y%m%dT%H%M%SZ"),
        &uuid::Uuid::new_v4().simple().to_string()[..6]
    )
}

pub fn mode_name(m: SearchMode) -> &'static str {
    match m {
        SearchMode::Hybrid => "hybrid",
        SearchMode::Dense => "dense",
        SearchMode::Sparse => "sparse",
    }
}

pub struct Options {
    pub run_id: String,
    pub qa: PathBuf,
    pub collection: String,
    pub ks: Vec<usize>,
    pub modes: Vec<SearchMode>,
    /// Also ask every question (answer metrics); off = retrieval only.
    pub answers: bool,
    pub out: PathBuf,
    pub history: PathBuf,
    pub tolerance: f64,
    /// Draw a progress bar.
    pub progress: bool,
}

/// Latency percentiles, milliseconds.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Pct {
    pub p50: f64,
    pub p95: f64,
}

impl Pct {
    pub fn of(xs: &[f64]) -> Pct {
        let mut v = xs.to_vec();
        v.sort_by(|a, b| a.total_cmp(b));
        let at = |p: f64| -> f64 {
            if v.is_empty() {
                return 0.0;
            }
            // Nearest rank.
            let i = ((p / 100.0) * v.len() as f64).ceil() as usize;
            v[i.clamp(1, v.len()) - 1]
        };
        Pct {
            p50: at(50.0),
            p95: at(95.0),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ModeSummary {
    pub scores: Scores,
    pub retrieve_ms: Pct,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct AnswerSummary {
    pub mode: String,
    pub accuracy: f64,
    pub false_decline: f64,
    pub decline_rate: f64,
    pub answer_ms: Pct,
    pub first_token_ms: Pct,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cost_usd: f64,
    pub errors: usize,
    /// Of the delivered answers' judged sentences, the share without support in the sources
    /// they cite; and the share of answers (not declines) with at least one such sentence.
    #[serde(default)]
    pub unsupported_sentences: f64,
    #[serde(default)]
    pub answers_with_unsupported: f64,
    /// How often the guard replaced a generated answer (fallback or decline).
    #[serde(default)]
    pub guard_replaced: f64,
}

/// One stored run: what was measured, on what, with what.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRecord {
    pub run_id: String,
    pub started_at: String,
    pub qa_file: String,
    pub qa_sha256: String,
    pub items: usize,
    pub collection: String,
    pub target: String,
    pub config: Value,
    pub ks: Vec<usize>,
    pub modes: BTreeMap<String, ModeSummary>,
    pub answers: Option<AnswerSummary>,
    pub out_dir: String,
}

fn share(part: usize, whole: usize) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

fn sha256_hex(b: &[u8]) -> String {
    Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

/// Run the set. Writes `results-<mode>.jsonl` (the format `score.py` reads, plus chunk ids,
/// scores and verdicts) into `opts.out`; returns the run record (not yet stored).
pub async fn run(
    target: &dyn Target,
    target_name: &str,
    opts: &Options,
) -> anyhow::Result<RunRecord> {
    let raw = std::fs::read(&opts.qa).with_context(|| format!("reading {}", opts.qa.display()))?;
    let items = score::parse_qa(std::str::from_utf8(&raw).context("the QA file is not UTF-8")?)?;
    let config = target.describe().await?;
    let answer_mode = target.answer_mode().await?;
    let kmax = *opts.ks.iter().max().context("no k given")?;
    std::fs::create_dir_all(&opts.out)
        .with_context(|| format!("creating {}", opts.out.display()))?;

    let started_at = chrono::Utc::now();
    let bar = if opts.progress {
        let b = indicatif::ProgressBar::new(items.len() as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} eval [{bar:30}] {pos}/{len} questions  {per_sec}  eta {eta}  {msg}",
            )
            .unwrap()
            .progress_chars("=> "),
        );
        b
    } else {
        indicatif::ProgressBar::hidden()
    };

    // Per mode: hits per item and retrieval latencies.
    let mut hits: BTreeMap<&'static str, Vec<Vec<Hit>>> = BTreeMap::new();
    let mut lat: BTreeMap<&'static str, Vec<f64>> = BTreeMap::new();
    let mut answers: Vec<Option<Answer>> = Vec::new();
    for it in &items {
        for &m in &opts.modes {
            let t = Instant::now();
            let h = target
                .search(&opts.collection, &it.question, kmax, m)
                .await
                .with_context(|| format!("searching for item {}", it.id))?;
            lat.entry(mode_name(m))
                .or_default()
                .push(t.elapsed().as_secs_f64() * 1e3);
            hits.entry(mode_name(m)).or_default().push(h);
        }
        answers.push(if opts.answers {
            Some(target.ask(&opts.collection, &it.question).await?)
        } else {
            None
        });
        bar.inc(1);
    }
    bar.finish_and_clear();

    let mut modes = BTreeMap::new();
    for &m in &opts.modes {
        let name = mode_name(m);
        let mut verdicts: Vec<Verdict> = Vec::new();
        let path = opts.out.join(format!("results-{name}.jsonl"));
        let mut lines = String::new();
        for (i, it) in items.iter().enumerate() {
            let h = &hits[name][i];
            let a = answers[i].as_ref();
            let outcome = Outcome {
                retrieved: h.iter().map(|x| x.text.clone()).collect(),
                answer: a.map(|a| a.answer.clone()).unwrap_or_default(),
                declined: a.map(|a| a.declined),
            };
            let v = score::judge(it, &outcome, &opts.ks);
            let mut row = json!({
                "id": it.id,
                "type": it.kind,
                "question": it.question,
                "retrieved": outcome.retrieved,
                "chunk_ids": h.iter().map(|x| &x.chunk_id).collect::<Vec<_>>(),
                "doc_names": h.iter().map(|x| &x.doc_name).collect::<Vec<_>>(),
                "scores": h.iter().map(|x| x.score).collect::<Vec<_>>(),
                "retrieve_ms": lat[name][i],
                "verdict": v,
            });
            if let Some(a) = a {
                row["answer"] = json!(a.answer);
                row["declined"] = json!(a.declined);
                row["answerer"] = json!(a.answerer);
                row["citations"] = json!(a.citations);
                row["answer_ms"] = json!(a.total_ms);
                if let Some(g) = &a.grounding {
                    row["grounding"] = g.clone();
                }
                if let Some(g) = &a.guard_action {
                    row["guard"] = json!(g);
                }
                row["sentences_checked"] = json!(a.sentences_checked);
                row["unsupported"] = json!(a.unsupported);
                if let Some(e) = &a.error {
                    row["error"] = json!(e);
                }
            }
            lines.push_str(&serde_json::to_string(&row)?);
            lines.push('\n');
            verdicts.push(v);
        }
        std::fs::write(&path, lines).with_context(|| format!("writing {}", path.display()))?;
        modes.insert(
            name.to_string(),
            ModeSummary {
                scores: score::aggregate(&items, &verdicts, &opts.ks),
                retrieve_ms: Pct::of(&lat[name]),
            },
        );
    }

    let answer_summary = if opts.answers {
        let a: Vec<&Answer> = answers.iter().flatten().collect();
        // Answer metrics do not depend on the retrieval mode scored: take them from any mode.
        let s = &modes.values().next().context("no mode")?.scores;
        Some(AnswerSummary {
            mode: mode_name(answer_mode).into(),
            accuracy: s.accuracy,
            false_decline: s.false_decline,
            decline_rate: s.decline_rate,
            answer_ms: Pct::of(&a.iter().map(|x| x.total_ms).collect::<Vec<_>>()),
            first_token_ms: Pct::of(
                &a.iter()
                    .filter_map(|x| x.first_token_ms)
                    .collect::<Vec<_>>(),
            ),
            prompt_tokens: a.iter().map(|x| x.prompt_tokens).sum(),
            completion_tokens: a.iter().map(|x| x.completion_tokens).sum(),
            cost_usd: a.iter().map(|x| x.cost_usd).sum(),
            errors: a.iter().filter(|x| x.error.is_some()).count(),
            unsupported_sentences: share(
                a.iter().map(|x| x.unsupported.len()).sum(),
                a.iter().map(|x| x.sentences_checked).sum(),
            ),
            answers_with_unsupported: share(
                a.iter().filter(|x| !x.unsupported.is_empty()).count(),
                a.iter()
                    .filter(|x| !x.declined && x.error.is_none())
                    .count(),
            ),
            guard_replaced: share(
                a.iter()
                    .filter(|x| {
                        matches!(
                            x.guard_action.as_deref(),
                            Some("fallback_extractive" | "declined")
                        )
                    })
                    .count(),
                a.len(),
            ),
        })
    } else {
        None
    };

    Ok(RunRecord {
        run_id: opts.run_id.clone(),
        started_at: started_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        qa_file: opts.qa.display().to_string(),
        qa_sha256: sha256_hex(&raw),
        items: items.len(),
        collection: opts.collection.clone(),
        target: target_name.into(),
        config,
        ks: opts.ks.clone(),
        modes,
        answers: answer_summary,
        out_dir: opts.out.display().to_string(),
    })
}
