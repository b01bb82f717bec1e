//! kb against an OpenAI-compatible upstream that misbehaves on demand.
//!
//! The upstream here is a FAULT INJECTOR (a scripted in-process axum server), not a model: it
//! exists to produce what real servers do only occasionally — replies without optional fields,
//! 429 with Retry-After, 5xx, streams that stall or carry garbage.

use crate::common::*;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
enum Script {
    /// Stream these pieces; `ids`: include `id`/`model`/`object` fields; then usage and [DONE].
    Stream {
        pieces: Vec<&'static str>,
        ids: bool,
    },
    Status {
        code: u16,
        retry_after: Option<&'static str>,
    },
    /// Send `n` pieces, then nothing (connection stays open).
    StallAfter(usize),
    /// These pieces, then the connection closes: no finish_reason, no [DONE].
    Truncated(Vec<&'static str>),
    Malformed,
}

#[derive(Default)]
struct Fake {
    script: Mutex<VecDeque<Script>>,
    requests: Mutex<Vec<Value>>,
}

async fn completions(State(fake): State<Arc<Fake>>, body: axum::Json<Value>) -> Response {
    fake.requests.lock().unwrap().push(body.0.clone());
    let next = fake
        .script
        .lock()
        .unwrap()
        .pop_front()
        .unwrap_or(Script::Stream {
            pieces: vec!["default answer [1]"],
            ids: false,
        });
    let sse = |chunks: Vec<String>| {
        let body = chunks.concat();
        ([("content-type", "text/event-stream")], body).into_response()
    };
    let piece = |text: &str, ids: bool| {
        let mut v = json!({"choices": [{"index": 0, "delta": {"content": text}}]});
        if ids {
            v["id"] = "chatcmpl-1".into();
            v["object"] = "chat.completion.chunk".into();
            v["model"] = "fake".into();
        }
        format!("data: {v}\n\n")
    };
    match next {
        Script::Stream { pieces, ids } => {
            let mut out: Vec<String> = pieces.iter().map(|p| piece(p, ids)).collect();
            out.push(format!(
                "data: {}\n\n",
                json!({"choices": [], "usage": {"prompt_tokens": 321, "completion_tokens": 12}})
            ));
            out.push("data: [DONE]\n\n".into());
            sse(out)
        }
        Script::Status { code, retry_after } => {
            let mut r = (
                axum::http::StatusCode::from_u16(code).unwrap(),
                axum::Json(json!({"error": {"message": format!("scripted {code}")}})),
            )
                .into_response();
            if let Some(ra) = retry_after {
                r.headers_mut().insert("retry-after", ra.parse().unwrap());
            }
            r
        }
        Script::StallAfter(n) => {
            let head: Vec<String> = (0..n).map(|i| piece(&format!("part{i} "), false)).collect();
            let stream = async_stream::stream! {
                for h in head {
                    yield Ok::<_, std::convert::Infallible>(h);
                }
                tokio::time::sleep(Duration::from_secs(3600)).await;
            };
            (
                [("content-type", "text/event-stream")],
                axum::body::Body::from_stream(stream),
            )
                .into_response()
        }
        Script::Truncated(pieces) => sse(pieces.iter().map(|p| piece(p, false)).collect()),
        Script::Malformed => sse(vec!["data: {this is not json\n\n".into()]),
    }
}

fn start_fake() -> (String, Arc<Fake>) {
    let fake = Arc::new(Fake::default());
    let app = axum::Router::new()
        .route("/v1/chat/completions", post(completions))
        .with_state(fake.clone());
    (serve_upstream(app), fake)
}

fn ask(s: &Server) -> Vec<(String, Value)> {
    s.ask_sse(&json!({"collection": "llm", "question": "How many lanterns hang in the east hall?"}))
}

#[test]
fn upstream_faults_are_handled_by_the_rules() {
    let (url, fake) = start_fake();
    let s = Server::start_with(&[
        ("KB_LLM__PROVIDER", "openai"),
        ("KB_LLM__MODEL", "fake-model"),
        ("KB_LLM__BASE_URL", &url),
        ("KB_LLM__API_KEY", "sk-test-secret"),
        ("KB_LLM__FIRST_TOKEN_TIMEOUT_SECS", "2"),
        ("KB_LLM__IDLE_TIMEOUT_SECS", "1"),
        // The same question meets a different upstream fault each time: no answer cache.
        ("KB_CACHE__ENABLED", "false"),
    ]);
    let (st, up) = s.upload(
        "llm",
        &[(
            "hall.md",
            b"# Hall\n\nTwelve lanterns hang in the east hall.\n".to_vec(),
        )],
    );
    assert_eq!(st, 202);
    s.wait_job(up["documents"][0]["job_id"].as_str().unwrap());
    let script = |items: Vec<Script>| {
        let mut q = fake.script.lock().unwrap();
        q.clear();
        q.extend(items);
        fake.requests.lock().unwrap().clear();
    };
    let requests = || fake.requests.lock().unwrap().len();
    let last = |ev: &[(String, Value)]| ev.last().unwrap().clone();

    // A lenient parse: no id/model/object fields; usage reported at the end.
    script(vec![Script::Stream {
        pieces: vec!["Twelve ", "lanterns ", "[1]."],
        ids: false,
    }]);
    let ev = ask(&s);
    let (name, done) = last(&ev);
    assert_eq!(name, "done", "{ev:?}");
    assert_eq!(done["answer"], "Twelve lanterns [1].");
    assert_eq!(done["citations"], json!([1]));
    assert_eq!(done["answerer"], "llm");
    assert_eq!(done["usage"]["prompt_tokens"], 321);
    assert_eq!(done["usage"]["completion_tokens"], 12);
    assert_eq!(ev[0].1["model"], "fake-model");
    assert_eq!(ev.iter().filter(|(e, _)| e == "token").count(), 3);
    // The context budget counted the source in the generating model's tokenizer (tiktoken;
    // cl100k_base for a model name it does not know), counted once at ingestion.
    let source_text = ev[1].1[0]["text"].as_str().unwrap();
    let bpe = tiktoken_rs::cl100k_base_singleton()
        .encode_ordinary(source_text)
        .len();
    assert_eq!(done["context"]["included"][0]["tokens"], bpe, "{done}");
    // The prompt numbered the sources and carried the question; the key was sent, streaming on.
    let req = fake.requests.lock().unwrap()[0].clone();
    let user = req["messages"][1]["content"].as_str().unwrap();
    assert!(
        user.contains("[1] (hall.md") && user.contains("Twelve lanterns hang"),
        "{user}"
    );
    assert!(user.ends_with("How many lanterns hang in the east hall?"));
    assert_eq!(req["stream"], true);

    // 429 with Retry-After: waited for, then retried.
    script(vec![
        Script::Status {
            code: 429,
            retry_after: Some("1"),
        },
        Script::Stream {
            pieces: vec!["ok [1]"],
            ids: true,
        },
    ]);
    let t = Instant::now();
    let ev = ask(&s);
    assert_eq!(last(&ev).0, "done", "{ev:?}");
    assert!(
        t.elapsed() >= Duration::from_millis(950),
        "Retry-After honoured"
    );
    assert_eq!(requests(), 2);

    // Retry-After beyond the cap: fails at once, no retry.
    script(vec![Script::Status {
        code: 429,
        retry_after: Some("3600"),
    }]);
    let t = Instant::now();
    let ev = ask(&s);
    let (name, err) = last(&ev);
    assert_eq!(name, "error");
    assert_eq!(err["error"]["code"], "upstream_rate_limited");
    assert!(t.elapsed() < Duration::from_secs(5));
    assert_eq!(requests(), 1);

    // 503 is retried (3 retries), then reported.
    script(vec![
        Script::Status {
            code: 503,
            retry_after: None
        };
        6
    ]);
    let ev = ask(&s);
    assert_eq!(last(&ev).1["error"]["code"], "upstream_error");
    assert_eq!(requests(), 4);

    // 400 is never retried.
    script(vec![Script::Status {
        code: 400,
        retry_after: None,
    }]);
    let ev = ask(&s);
    assert_eq!(last(&ev).0, "error");
    assert_eq!(requests(), 1);

    // A stream that stalls after its first tokens ends with an error event naming the timeout.
    script(vec![Script::StallAfter(2)]);
    let t = Instant::now();
    let ev = ask(&s);
    let (name, err) = last(&ev);
    assert_eq!(name, "error", "{ev:?}");
    assert_eq!(err["error"]["code"], "upstream_timeout");
    assert!(
        err["error"]["message"].as_str().unwrap().contains("idle"),
        "{err}"
    );
    assert_eq!(
        ev.iter().filter(|(e, _)| e == "token").count(),
        2,
        "tokens before the stall reached the client"
    );
    assert!(t.elapsed() < Duration::from_secs(10));
    assert_eq!(
        requests(),
        1,
        "nothing retried after a token reached the client"
    );

    // A stream cut short (no finish_reason, no [DONE]) is an error, not a short answer.
    script(vec![Script::Truncated(vec!["Twelve ", "lan"])]);
    let ev = ask(&s);
    let (name, err) = last(&ev);
    assert_eq!(name, "error", "{ev:?}");
    assert_eq!(err["error"]["code"], "upstream_unreachable", "{err}");
    assert_eq!(requests(), 1, "not retried: tokens had reached the client");

    // Garbage in the stream.
    script(vec![Script::Malformed]);
    let ev = ask(&s);
    assert_eq!(last(&ev).1["error"]["code"], "upstream_malformed");

    // The server still answers, and the key never shows in the config output.
    assert_eq!(s.get("/healthz").0, 200);
}

/// The OpenAI-compatible route over the same faults: usage passes through; a failure before the
/// first token is an HTTP status; a failure mid-stream ends the stream with an error in OpenAI's
/// shape, then `[DONE]`.
#[test]
fn chat_completions_report_upstream_faults() {
    let (url, fake) = start_fake();
    let s = Server::start_with(&[
        ("KB_LLM__PROVIDER", "openai"),
        ("KB_LLM__MODEL", "fake-model"),
        ("KB_LLM__BASE_URL", &url),
        ("KB_LLM__API_KEY", "sk-test-secret"),
        ("KB_LLM__FIRST_TOKEN_TIMEOUT_SECS", "2"),
        ("KB_LLM__IDLE_TIMEOUT_SECS", "1"),
        // The same question meets a different upstream fault each time: no answer cache.
        ("KB_CACHE__ENABLED", "false"),
    ]);
    let (st, up) = s.upload(
        "llm",
        &[(
            "hall.md",
            b"# Hall\n\nTwelve lanterns hang in the east hall.\n".to_vec(),
        )],
    );
    assert_eq!(st, 202);
    s.wait_job(up["documents"][0]["job_id"].as_str().unwrap());
    let script = |items: Vec<Script>| {
        let mut q = fake.script.lock().unwrap();
        q.clear();
        q.extend(items);
    };
    let complete = |stream: bool| {
        let r = Server::client()
            .post(s.url("/v1/chat/completions"))
            .json(&json!({
                "model": "kb/llm",
                "stream": stream,
                "stream_options": {"include_usage": true},
                "messages": [{"role": "user", "content": "How many lanterns hang in the east hall?"}],
            }))
            .send()
            .unwrap();
        (r.status().as_u16(), r.text().unwrap())
    };
    let data = |body: &str| -> Vec<String> {
        body.split("\n\n")
            .filter_map(|b| b.strip_prefix("data: ").map(str::to_string))
            .collect()
    };

    // The upstream's usage is the completion's usage, streamed or not.
    script(vec![Script::Stream {
        pieces: vec!["Twelve ", "lanterns ", "[1]."],
        ids: false,
    }]);
    let (st, body) = complete(false);
    assert_eq!(st, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "Twelve lanterns [1]."
    );
    assert_eq!(
        v["usage"],
        json!({"prompt_tokens": 321, "completion_tokens": 12, "total_tokens": 333})
    );
    assert_eq!(v["kb"]["answerer"], "llm");
    assert_eq!(v["kb"]["citations"], json!([1]));
    script(vec![Script::Stream {
        pieces: vec!["Twelve ", "lanterns ", "[1]."],
        ids: true,
    }]);
    let (st, body) = complete(true);
    assert_eq!(st, 200, "{body}");
    let d = data(&body);
    assert_eq!(d.last().unwrap(), "[DONE]");
    let usage: Value = serde_json::from_str(&d[d.len() - 2]).unwrap();
    assert_eq!(usage["usage"]["total_tokens"], 333, "{usage}");

    // Refused before any token: an HTTP status, in OpenAI's shape, streamed or not.
    for stream in [false, true] {
        script(vec![Script::Status {
            code: 400,
            retry_after: None,
        }]);
        let (st, body) = complete(stream);
        assert_eq!(st, 502, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"]["type"], "server_error", "{v}");
        assert_eq!(v["error"]["code"], "upstream_error", "{v}");
        assert!(v["error"]["message"].is_string());
    }
    script(vec![Script::Status {
        code: 429,
        retry_after: Some("3600"),
    }]);
    let (st, body) = complete(true);
    assert_eq!(st, 429, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["code"], "upstream_rate_limited", "{v}");

    // Stalls after two tokens: those arrive, then an error line, then [DONE].
    script(vec![Script::StallAfter(2)]);
    let (st, body) = complete(true);
    assert_eq!(st, 200, "{body}");
    let d = data(&body);
    assert_eq!(d.last().unwrap(), "[DONE]", "{body}");
    let err: Value = serde_json::from_str(&d[d.len() - 2]).unwrap();
    assert_eq!(err["error"]["code"], "upstream_timeout", "{err}");
    assert_eq!(err["error"]["type"], "server_error", "{err}");
    let content: Vec<String> = d[..d.len() - 2]
        .iter()
        .map(|c| serde_json::from_str::<Value>(c).unwrap())
        .filter_map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_string)
        })
        .filter(|t| !t.is_empty())
        .collect();
    assert_eq!(content, ["part0 ", "part1 "], "{body}");
    assert!(
        !body.contains("\"finish_reason\":\"stop\""),
        "a broken answer does not end as if complete: {body}"
    );
}

#[test]
fn generated_answers_must_be_supported_by_their_sources() {
    let (url, fake) = start_fake();
    let start = |guard: &str| {
        let s = Server::start_with(&[
            ("KB_LLM__PROVIDER", "openai"),
            ("KB_LLM__MODEL", "fake-model"),
            ("KB_LLM__BASE_URL", &url),
            ("KB_LLM__GUARD", guard),
            ("KB_CACHE__ENABLED", "false"),
        ]);
        let (st, up) = s.upload(
            "llm",
            &[(
                "hall.md",
                b"# Hall\n\nTwelve lanterns hang in the east hall. The west hall has none.\n"
                    .to_vec(),
            )],
        );
        assert_eq!(st, 202);
        s.wait_job(up["documents"][0]["job_id"].as_str().unwrap());
        s
    };
    let script = |pieces: Vec<&'static str>| {
        let mut q = fake.script.lock().unwrap();
        q.clear();
        q.push_back(Script::Stream { pieces, ids: true });
    };
    let done_of = |s: &Server| {
        let ev = ask(s);
        let (name, done) = ev.last().unwrap().clone();
        assert_eq!(name, "done", "{ev:?}");
        done
    };

    let s = start("fallback");
    // Supported by the source it cites: kept.
    script(vec!["Twelve lanterns hang ", "in the east hall [1]."]);
    let done = done_of(&s);
    assert_eq!(done["answer"], "Twelve lanterns hang in the east hall [1].");
    assert_eq!(done["guard"]["action"], "passed", "{done}");
    assert_eq!(done["guard"]["checked"], 1);

    // An invented sentence: the answer falls back to the extractive one, which quotes the
    // source; the model's answer is kept in the report.
    script(vec![
        "Twelve lanterns hang in the east hall [1]. ",
        "Guided tours of the lanterns start every Sunday at noon [1].",
    ]);
    let done = done_of(&s);
    assert_eq!(done["guard"]["action"], "fallback_extractive", "{done}");
    let unsupported = done["guard"]["unsupported"].as_array().unwrap();
    assert_eq!(unsupported.len(), 1, "{done}");
    assert!(unsupported[0].as_str().unwrap().contains("Guided tours"));
    assert!(done["guard"]["original_answer"]
        .as_str()
        .unwrap()
        .contains("Guided tours"));
    let answer = done["answer"].as_str().unwrap();
    assert!(
        answer.contains("Twelve lanterns hang in the east hall"),
        "{answer}"
    );
    assert!(!answer.contains("Guided tours"), "{answer}");
    assert_eq!(done["answerer"], "llm");
    assert_eq!(done["declined"], false);
    assert_eq!(done["citations"], json!([1]));
    drop(s);

    // The same answer with the guard set to decline.
    let s = start("decline");
    script(vec![
        "Twelve lanterns hang in the east hall [1]. ",
        "Guided tours of the lanterns start every Sunday at noon [1].",
    ]);
    let done = done_of(&s);
    assert_eq!(done["guard"]["action"], "declined", "{done}");
    assert_eq!(done["declined"], true);
    assert!(done["citations"].as_array().unwrap().is_empty());
}
