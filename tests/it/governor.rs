//! The governor's rules, end to end: the real kb binary against a scripted OpenAI-compatible
//! FAULT INJECTOR (an in-process axum server; not a model). It serves chat completions and
//! embeddings, misbehaves on demand and records every request it receives, in order, so the
//! tests can count retries and check who reached the upstream first.

use crate::common::*;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
enum Script {
    /// A normal answer: streamed when the request asks for a stream, one JSON body otherwise;
    /// usage reported.
    Answer(Vec<&'static str>),
    Status {
        code: u16,
        retry_after: Option<String>,
        body: Option<Value>,
    },
    /// Accept the connection, never send the headers.
    HangBeforeHeaders,
    /// Send `n` pieces, then nothing more (the connection stays open).
    StallAfter(usize),
    /// Send `n` pieces, then only `: keep-alive` comments, forever.
    KeepAliveAfter(usize),
    /// A line that is not JSON after a first piece.
    MalformedAfterOne,
    /// These pieces, then the connection is cut (an error in the body, not a clean end).
    CutAfter(Vec<&'static str>),
}

#[derive(Debug, Clone)]
struct Seen {
    route: &'static str,
    body: Value,
}

#[derive(Default)]
struct Fake {
    chat: Mutex<VecDeque<Script>>,
    embed: Mutex<VecDeque<Script>>,
    seen: Mutex<Vec<Seen>>,
    /// Milliseconds every embeddings request takes.
    embed_delay_ms: AtomicU64,
}

impl Fake {
    fn script(&self, items: Vec<Script>) {
        let mut q = self.chat.lock().unwrap();
        q.clear();
        q.extend(items);
        self.seen.lock().unwrap().clear();
    }

    fn chat_requests(&self) -> Vec<Value> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.route == "chat")
            .map(|s| s.body.clone())
            .collect()
    }

    fn embed_inputs(&self) -> Vec<Vec<String>> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.route == "embed")
            .map(|s| {
                s.body["input"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_str().unwrap().to_string())
                    .collect()
            })
            .collect()
    }
}

const DIM: usize = 8;

/// A deterministic unit vector from the words of `text` (shared words -> closer vectors).
fn vector(text: &str) -> Vec<f32> {
    let mut v = [0f32; DIM];
    for w in text.split_whitespace() {
        let h = w
            .to_lowercase()
            .bytes()
            .fold(7u64, |a, b| a.wrapping_mul(31).wrapping_add(b as u64));
        v[(h % DIM as u64) as usize] += 1.0;
    }
    v[0] += 0.01;
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter().map(|x| x / n).collect()
}

fn piece(text: &str) -> String {
    format!(
        "data: {}\n\n",
        json!({"id": "c1", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": text}}]})
    )
}

fn streaming(
    head: Vec<String>,
    tail: impl futures::Stream<Item = Result<String, std::io::Error>> + Send + 'static,
) -> Response {
    let s = async_stream::stream! {
        for h in head {
            yield Ok::<_, std::io::Error>(h);
        }
        let mut tail = Box::pin(tail);
        while let Some(x) = futures::StreamExt::next(&mut tail).await {
            yield x;
        }
    };
    (
        [("content-type", "text/event-stream")],
        axum::body::Body::from_stream(s),
    )
        .into_response()
}

async fn respond(script: Script, stream: bool) -> Response {
    match script {
        Script::Answer(pieces) => {
            let usage = json!({"prompt_tokens": 321, "completion_tokens": 12, "total_tokens": 333});
            if !stream {
                return axum::Json(json!({
                    "id": "c1", "object": "chat.completion",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": pieces.concat()}, "finish_reason": "stop"}],
                    "usage": usage,
                }))
                .into_response();
            }
            let mut out: Vec<String> = pieces.iter().map(|p| piece(p)).collect();
            out.push(format!(
                "data: {}\n\n",
                json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
            ));
            out.push(format!(
                "data: {}\n\n",
                json!({"choices": [], "usage": usage})
            ));
            out.push("data: [DONE]\n\n".into());
            ([("content-type", "text/event-stream")], out.concat()).into_response()
        }
        Script::Status {
            code,
            retry_after,
            body,
        } => {
            let body =
                body.unwrap_or_else(|| json!({"error": {"message": format!("scripted {code}")}}));
            let mut r = (
                axum::http::StatusCode::from_u16(code).unwrap(),
                axum::Json(body),
            )
                .into_response();
            if let Some(ra) = retry_after {
                r.headers_mut().insert("retry-after", ra.parse().unwrap());
            }
            r
        }
        Script::HangBeforeHeaders => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            ().into_response()
        }
        Script::StallAfter(n) => streaming(
            (0..n).map(|i| piece(&format!("part{i} "))).collect(),
            async_stream::stream! {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                yield Ok(String::new());
            },
        ),
        Script::KeepAliveAfter(n) => streaming(
            (0..n).map(|i| piece(&format!("part{i} "))).collect(),
            async_stream::stream! {
                loop {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    yield Ok(": keep-alive\n\n".to_string());
                }
            },
        ),
        Script::MalformedAfterOne => streaming(
            vec![piece("Twelve "), "data: {\"choices\": [oops\n\n".into()],
            futures::stream::empty(),
        ),
        Script::CutAfter(pieces) => streaming(
            pieces.iter().map(|p| piece(p)).collect(),
            async_stream::stream! {
                tokio::time::sleep(Duration::from_millis(50)).await;
                yield Err(std::io::Error::other("cut"));
            },
        ),
    }
}

async fn completions(State(fake): State<Arc<Fake>>, body: axum::Json<Value>) -> Response {
    fake.seen.lock().unwrap().push(Seen {
        route: "chat",
        body: body.0.clone(),
    });
    let next = fake
        .chat
        .lock()
        .unwrap()
        .pop_front()
        .unwrap_or(Script::Answer(vec!["Twelve ", "lanterns ", "[1]."]));
    respond(next, body.0["stream"] == true).await
}

async fn embeddings(State(fake): State<Arc<Fake>>, body: axum::Json<Value>) -> Response {
    fake.seen.lock().unwrap().push(Seen {
        route: "embed",
        body: body.0.clone(),
    });
    let delay = fake.embed_delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let scripted = fake.embed.lock().unwrap().pop_front();
    if let Some(s) = scripted {
        return respond(s, false).await;
    }
    let inputs: Vec<String> = body.0["input"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    let tokens: usize = inputs.iter().map(|t| t.split_whitespace().count()).sum();
    axum::Json(json!({
        "object": "list",
        "data": inputs.iter().enumerate().map(|(i, t)| json!({"index": i, "embedding": vector(t)})).collect::<Vec<_>>(),
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }))
    .into_response()
}

fn start_fake() -> (String, Arc<Fake>) {
    let fake = Arc::new(Fake::default());
    let app = axum::Router::new()
        .route("/v1/chat/completions", post(completions))
        .route("/v1/embeddings", post(embeddings))
        .with_state(fake.clone());
    (serve_upstream(app), fake)
}

const DOC: &[u8] = b"# Hall\n\nTwelve lanterns hang in the east hall.\n";
const QUESTION: &str = "How many lanterns hang in the east hall?";

fn upload_and_wait(s: &Server, collection: &str, name: &str, bytes: &[u8]) {
    let (st, up) = s.upload(collection, &[(name, bytes.to_vec())]);
    assert_eq!(st, 202, "{up}");
    let job = s.wait_job(up["documents"][0]["job_id"].as_str().unwrap());
    assert_eq!(job["status"], "done", "{job}");
}

fn ask(s: &Server) -> Vec<(String, Value)> {
    s.ask_sse(&json!({"collection": "gov", "question": QUESTION}))
}

/// POST /v1/ask answered as JSON: (status, Retry-After, body).
fn ask_json(s: &Server) -> (u16, Option<String>, Value) {
    let r = Server::client()
        .post(s.url("/v1/ask"))
        .json(&json!({"collection": "gov", "question": QUESTION, "stream": false}))
        .send()
        .unwrap();
    let st = r.status().as_u16();
    let ra = r
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    (st, ra, r.json().unwrap_or(Value::Null))
}

fn metric(s: &Server, line_prefix: &str) -> Option<f64> {
    let text = s.metrics_text();
    text.lines()
        .find(|l| l.starts_with(line_prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn status(code: u16) -> Script {
    Script::Status {
        code,
        retry_after: None,
        body: None,
    }
}

fn remote_env(url: &str) -> Vec<(&'static str, String)> {
    vec![
        ("KB_EMBEDDING__PROVIDER", "openai".into()),
        ("KB_EMBEDDING__MODEL", "fake-embed".into()),
        ("KB_EMBEDDING__DIM", DIM.to_string()),
        ("KB_EMBEDDING__BASE_URL", url.into()),
        ("KB_LLM__PROVIDER", "openai".into()),
        ("KB_LLM__MODEL", "fake-chat".into()),
        ("KB_LLM__BASE_URL", url.into()),
        ("KB_LLM__FIRST_TOKEN_TIMEOUT_SECS", "1".into()),
        ("KB_LLM__IDLE_TIMEOUT_SECS", "1".into()),
        ("KB_LLM__BACKOFF_BASE_MS", "20".into()),
        ("KB_LLM__BACKOFF_CAP_MS", "100".into()),
        // The same question meets a different upstream fault each time: no answer cache.
        ("KB_CACHE__ENABLED", "false".into()),
    ]
}

fn start(env: Vec<(&'static str, String)>) -> Server {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Server::start_with(&env)
}

#[test]
fn retries_only_what_the_rules_allow() {
    let (url, fake) = start_fake();
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut env = remote_env(&url);
    env.push(("KB_LOG__FORMAT", "json".into()));
    env.push(("KB_LOG", "warn,kb::models=info".into()));
    let env2: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let s = Server::start_logging_to(&env2, log.path());
    upload_and_wait(&s, "gov", "hall.md", DOC);
    let n = || fake.chat_requests().len();

    // Normal streamed answer, usage reported.
    fake.script(vec![Script::Answer(vec!["Twelve ", "lanterns ", "[1]."])]);
    let ev = ask(&s);
    assert_eq!(ev.last().unwrap().0, "done", "{ev:?}");
    assert_eq!(ev.last().unwrap().1["usage"]["prompt_tokens"], 321);

    // Retried: 500, 502, 503, 504, 429 without Retry-After, a hang before the headers (a
    // first-token timeout). Each answers on the next attempt.
    for first in [
        status(500),
        status(502),
        status(503),
        status(504),
        status(429),
        Script::HangBeforeHeaders,
    ] {
        let what = format!("{first:?}");
        fake.script(vec![first, Script::Answer(vec!["ok [1]"])]);
        let ev = ask(&s);
        assert_eq!(ev.last().unwrap().0, "done", "{what}: {ev:?}");
        assert_eq!(n(), 2, "{what}: one retry");
    }

    // 429 with an HTTP-date Retry-After two seconds ahead: honoured (the date has one-second
    // resolution, so at least ~1 s passes), then retried.
    let date = (chrono::Utc::now() + chrono::Duration::seconds(2)).to_rfc2822();
    fake.script(vec![
        Script::Status {
            code: 429,
            retry_after: Some(date),
            body: None,
        },
        Script::Answer(vec!["ok [1]"]),
    ]);
    let t = Instant::now();
    let ev = ask(&s);
    assert_eq!(ev.last().unwrap().0, "done", "{ev:?}");
    assert!(
        t.elapsed() >= Duration::from_millis(900),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(n(), 2);

    // Never retried: 400, 401, 403, 404, a context-length error.
    for first in [
        status(400),
        status(401),
        status(403),
        status(404),
        Script::Status {
            code: 400,
            retry_after: None,
            body: Some(
                json!({"error": {"message": "This model's maximum context length is 8192 tokens", "code": "context_length_exceeded"}}),
            ),
        },
    ] {
        let what = format!("{first:?}");
        fake.script(vec![first, Script::Answer(vec!["never sent"])]);
        let ev = ask(&s);
        assert_eq!(ev.last().unwrap().0, "error", "{what}: {ev:?}");
        assert_eq!(n(), 1, "{what}: not retried");
    }
    fake.script(vec![Script::Status {
        code: 400,
        retry_after: None,
        body: Some(json!({"error": {"message": "too long", "code": "context_length_exceeded"}})),
    }]);
    assert_eq!(
        ask(&s).last().unwrap().1["error"]["code"],
        "context_length_exceeded"
    );

    // Retry-After beyond the cap (60 s): fails at once with a clear error, as an HTTP 429 with
    // the upstream's wait, without a second request.
    fake.script(vec![Script::Status {
        code: 429,
        retry_after: Some("3600".into()),
        body: None,
    }]);
    let t = Instant::now();
    let (st, ra, body) = ask_json(&s);
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    assert_eq!(st, 429, "{body}");
    assert_eq!(ra.as_deref(), Some("3600"));
    let msg = body["error"]["message"].as_str().unwrap();
    assert!(msg.contains("3600") && msg.contains("60 s cap"), "{msg}");
    assert_eq!(n(), 1);

    // After the first token nothing is retried: a stall, keep-alive comments without data (they
    // do not reset the idle timeout), garbage, a cut connection. Each ends the SSE stream with
    // an error event, after the tokens that did arrive.
    for (script, code, tokens) in [
        (Script::StallAfter(2), "upstream_timeout", 2),
        (Script::KeepAliveAfter(2), "upstream_timeout", 2),
        (Script::MalformedAfterOne, "upstream_malformed", 1),
        (
            Script::CutAfter(vec!["Twelve ", "lan"]),
            "upstream_unreachable",
            2,
        ),
    ] {
        let what = format!("{script:?}");
        fake.script(vec![script, Script::Answer(vec!["never sent"])]);
        let t = Instant::now();
        let ev = ask(&s);
        let (name, err) = ev.last().unwrap().clone();
        assert_eq!(name, "error", "{what}: {ev:?}");
        assert_eq!(err["error"]["code"], code, "{what}: {err}");
        if code == "upstream_timeout" {
            assert!(
                err["error"]["message"].as_str().unwrap().contains("idle"),
                "{err}"
            );
            // Idle timeout 1 s: well under the 3600 s the upstream would hang.
            assert!(
                t.elapsed() < Duration::from_secs(8),
                "{what}: {:?}",
                t.elapsed()
            );
        }
        assert_eq!(
            ev.iter().filter(|(e, _)| e == "token").count(),
            tokens,
            "{what}"
        );
        assert_eq!(n(), 1, "{what}: not retried after a token");
    }

    // Metrics: per upstream, time to first token, tokens, retries, errors by kind.
    let ttft = metric(
        &s,
        "kb_model_time_to_first_token_seconds_count{upstream=\"chat:fake-chat\"}",
    );
    assert!(ttft.unwrap() >= 9.0, "{ttft:?}");
    assert!(
        metric(
            &s,
            "kb_model_tokens_total{upstream=\"chat:fake-chat\",direction=\"in\"}"
        )
        .unwrap()
            >= 321.0 * 9.0
    );
    assert!(metric(&s, "kb_model_retries_total{upstream=\"chat:fake-chat\"}").unwrap() >= 7.0);
    for kind in [
        "server_error",
        "rate_limited",
        "timeout_first_token",
        "timeout_idle",
        "client_error",
        "context_length_exceeded",
        "upstream_malformed",
    ] {
        let v = metric(
            &s,
            &format!(
                "kb_model_upstream_errors_total{{upstream=\"chat:fake-chat\",kind=\"{kind}\"}}"
            ),
        );
        assert!(v.unwrap_or(0.0) >= 1.0, "{kind}");
    }
    assert!(
        metric(
            &s,
            "kb_model_calls_total{upstream=\"embed:fake-embed\",outcome=\"ok\"}"
        )
        .unwrap()
            >= 1.0
    );

    // One JSON log line per model call, with model, outcome, latency and retries; no prompt.
    let text = std::fs::read_to_string(log.path()).unwrap();
    let calls: Vec<Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["fields"]["message"] == "model call")
        .collect();
    let chat_calls: Vec<&Value> = calls
        .iter()
        .filter(|v| v["fields"]["upstream"] == "chat:fake-chat")
        .collect();
    // 1 + 6 + 1 + 5 + 1 + 1 + 4 asks above.
    assert_eq!(chat_calls.len(), 19, "{text}");
    for c in &calls {
        let f = &c["fields"];
        assert!(f["model"].is_string() && f["outcome"].is_string(), "{c}");
        assert!(f["latency_ms"].is_u64() && f["retries"].is_u64(), "{c}");
    }
    assert!(chat_calls
        .iter()
        .any(|c| c["fields"]["retries"] == 1 && c["fields"]["outcome"] == "ok"));
    assert!(
        !text.contains("lanterns hang"),
        "no prompt or document text in logs"
    );
}

#[test]
fn interactive_calls_overtake_a_bulk_backlog() {
    let (url, fake) = start_fake();
    let mut env = remote_env(&url);
    env.extend([
        ("KB_EMBEDDING__MAX_CONCURRENCY", "1".into()),
        ("KB_EMBEDDING__MAX_BATCH_TEXTS", "1".into()),
        ("KB_EMBEDDING__BATCH_SIZE", "64".into()),
        ("KB_CHUNKING__MAX_TOKENS", "12".into()),
        ("KB_CHUNKING__OVERLAP_TOKENS", "0".into()),
    ]);
    let s = start(env);
    upload_and_wait(&s, "gov", "hall.md", DOC);
    // A document of some 60 chunks, each embedded alone (max_batch_texts 1) through one
    // connection, 100 ms per request: a backlog of bulk batches in the governor's queue.
    fake.embed_delay_ms.store(100, Ordering::SeqCst);
    fake.seen.lock().unwrap().clear();
    let big: String = (0..60)
        .map(|i| format!("Paragraph {i} tells of lantern number {i} and its brass hook.\n\n"))
        .collect();
    let (st, up) = s.upload("gov", &[("big.md", big.into_bytes())]);
    assert_eq!(st, 202);
    wait_until("a bulk backlog", Duration::from_secs(30), || {
        fake.embed_inputs().len() >= 3
    });
    let before = fake.embed_inputs().len();
    let hits = s.search("gov", QUESTION, 3);
    assert!(!hits.is_empty());
    let inputs = fake.embed_inputs();
    let q = inputs
        .iter()
        .position(|i| i == &vec![QUESTION.to_string()])
        .expect("the question was embedded");
    // One bulk request may be in flight when the question arrives, and one more may have been
    // admitted in the instant between counting and asking; never the backlog.
    assert!(
        q <= before + 1,
        "question at {q}, {before} requests before it"
    );
    let job = s.wait_job(up["documents"][0]["job_id"].as_str().unwrap());
    assert_eq!(job["status"], "done", "{job}");
    let total = fake.embed_inputs().len();
    assert!(
        total - q > 20,
        "most bulk batches came after the question ({q} of {total})"
    );
}

#[test]
fn a_full_queue_answers_429_with_retry_after() {
    let (url, fake) = start_fake();
    let mut env = remote_env(&url);
    env.extend([
        ("KB_EMBEDDING__MAX_CONCURRENCY", "1".into()),
        ("KB_EMBEDDING__QUEUE_SIZE", "1".into()),
    ]);
    let s = Arc::new(start(env));
    upload_and_wait(&s, "gov", "hall.md", DOC);
    fake.embed_delay_ms.store(3000, Ordering::SeqCst);
    // One question holds the only slot, one waits: the queue is full.
    let mut waiting = Vec::new();
    for _ in 0..2 {
        let s = s.clone();
        waiting.push(std::thread::spawn(move || {
            s.post_json(
                "/v1/search",
                &json!({"collection": "gov", "query": QUESTION}),
            )
            .0
        }));
        std::thread::sleep(Duration::from_millis(300));
    }
    let r = Server::client()
        .post(s.url("/v1/search"))
        .json(&json!({"collection": "gov", "query": QUESTION}))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 429);
    let ra: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&ra), "{ra}");
    let body: Value = r.json().unwrap();
    assert_eq!(body["error"]["code"], "overloaded", "{body}");
    // /v1/ask too, streamed or not: a status before any event.
    let (st, ra, body) = ask_json(&s);
    assert_eq!(st, 429, "{body}");
    assert!(ra.is_some());
    let r = Server::client()
        .post(s.url("/v1/ask"))
        .header("accept", "text/event-stream")
        .json(&json!({"collection": "gov", "question": QUESTION}))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 429);
    assert!(r.headers().get("retry-after").is_some());
    assert!(
        metric(
            &s,
            "kb_model_upstream_errors_total{upstream=\"embed:fake-embed\",kind=\"queue_full\"}"
        )
        .unwrap()
            >= 3.0
    );
    assert_eq!(
        metric(
            &s,
            "kb_model_queue_depth{upstream=\"embed:fake-embed\",priority=\"interactive\"}"
        ),
        Some(1.0)
    );
    for w in waiting {
        assert_eq!(
            w.join().unwrap(),
            200,
            "the admitted questions are answered"
        );
    }
}

#[test]
fn the_breaker_opens_then_half_opens_and_fallbacks_answer() {
    let (url, fake) = start_fake();
    let mut env = remote_env(&url);
    env.extend([
        ("KB_LLM__MAX_RETRIES", "0".into()),
        ("KB_LLM__BREAKER_FAILURES", "2".into()),
        ("KB_LLM__BREAKER_COOLDOWN_SECS", "2".into()),
    ]);
    let s = start(env);
    upload_and_wait(&s, "gov", "hall.md", DOC);

    // Two failures in a row open the breaker.
    fake.script(vec![status(500), status(503)]);
    for _ in 0..2 {
        assert_eq!(ask(&s).last().unwrap().1["error"]["code"], "upstream_error");
    }
    assert_eq!(
        metric(&s, "kb_model_breaker_state{upstream=\"chat:fake-chat\"}"),
        Some(2.0)
    );
    // Open: refused at once, nothing sent, 503 with Retry-After.
    let t = Instant::now();
    let (st, ra, body) = ask_json(&s);
    assert_eq!(st, 503, "{body}");
    assert_eq!(body["error"]["code"], "upstream_unavailable");
    assert!(ra.is_some());
    assert!(t.elapsed() < Duration::from_secs(1));
    assert_eq!(fake.chat_requests().len(), 2);
    // After the cool-down one probe goes through; it succeeds and closes the breaker.
    std::thread::sleep(Duration::from_millis(2100));
    assert_eq!(ask(&s).last().unwrap().0, "done");
    assert_eq!(fake.chat_requests().len(), 3);
    assert_eq!(
        metric(&s, "kb_model_breaker_state{upstream=\"chat:fake-chat\"}"),
        Some(0.0)
    );
    drop(s);

    // With a fallback model: the primary fails before its first token, the fallback answers.
    let mut env = remote_env(&url);
    env.extend([
        ("KB_LLM__MAX_RETRIES", "0".into()),
        ("KB_LLM__FALLBACK_MODELS", "[\"backup-chat\"]".into()),
    ]);
    let s = start(env);
    upload_and_wait(&s, "gov", "hall.md", DOC);
    fake.script(vec![status(503), Script::Answer(vec!["Twelve [1]."])]);
    let ev = ask(&s);
    assert_eq!(ev.last().unwrap().0, "done", "{ev:?}");
    assert_eq!(ev.last().unwrap().1["answer"], "Twelve [1].");
    let models: Vec<Value> = fake
        .chat_requests()
        .iter()
        .map(|r| r["model"].clone())
        .collect();
    assert_eq!(models, vec![json!("fake-chat"), json!("backup-chat")]);
    // A bad request is not sent to the fallback.
    fake.script(vec![status(400), Script::Answer(vec!["never sent"])]);
    assert_eq!(ask(&s).last().unwrap().0, "error");
    assert_eq!(fake.chat_requests().len(), 1);
}

/// Two kb replicas (two processes, two data directories) on one Redis share the chat model's
/// rate limit: with `llm.rpm = 3`, six concurrent questions across both reach the upstream
/// three times in the window; the rest wait and are refused after the queue timeout.
#[test]
fn two_replicas_share_one_rate_limit_through_redis() {
    let Ok(redis) = std::env::var("KB_TEST_REDIS_URL") else {
        eprintln!("NOTICE: KB_TEST_REDIS_URL is not set: the shared rate-limit test did not run (scripts/test.sh starts a redis-server)");
        return;
    };
    let (url, fake) = start_fake();
    // A model name of its own: the shared buckets are keyed by upstream.
    let model = format!("fake-chat-{}", uuid::Uuid::new_v4());
    let mut env = remote_env(&url);
    env.retain(|(k, _)| *k != "KB_LLM__MODEL");
    env.extend([
        ("KB_LLM__MODEL", model.clone()),
        ("KB_LLM__RPM", "3".into()),
        ("KB_LLM__QUEUE_TIMEOUT_SECS", "2".into()),
        ("KB_CACHE__REDIS_URL", redis),
    ]);
    let (a, b) = (start(env.clone()), start(env));
    for s in [&a, &b] {
        upload_and_wait(s, "gov", "hall.md", DOC);
    }
    fake.script(vec![]);
    let t = Instant::now();
    let results: Vec<u16> = std::thread::scope(|scope| {
        let hs: Vec<_> = (0..6)
            .map(|i| {
                let s = if i % 2 == 0 { &a } else { &b };
                scope.spawn(move || {
                    Server::client()
                        .post(s.url("/v1/ask"))
                        .json(&json!({"collection": "gov", "question": QUESTION, "stream": false, "cache": false}))
                        .send()
                        .unwrap()
                        .status()
                        .as_u16()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let chats = fake
        .chat_requests()
        .iter()
        .filter(|r| r["model"] == model.as_str())
        .count();
    assert_eq!(
        chats, 3,
        "the upstream saw the shared limit, no more: {results:?}"
    );
    assert_eq!(
        results.iter().filter(|s| **s == 200).count(),
        3,
        "{results:?}"
    );
    assert_eq!(
        results.iter().filter(|s| **s == 429).count(),
        3,
        "{results:?}"
    );
    assert!(t.elapsed() < Duration::from_secs(30), "{:?}", t.elapsed());
    for s in [&a, &b] {
        assert_eq!(metric(s, "kb_rate_limit_redis_fallbacks_total"), Some(0.0));
    }
}
