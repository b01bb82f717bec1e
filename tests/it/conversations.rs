//! Conversations (rewrite of follow-ups, summaries within the budget, the routes), and usage
//! and cost, with the extractive answerer and with an OpenAI-compatible upstream.
//!
//! The upstream is a FAULT INJECTOR in the pattern of tests/it/llm.rs (a scripted in-process axum
//! server), not a model: it answers each kind of request (answer, rewrite, summarize, told
//! apart by the system prompt kb sends) with scripted text and reports usage.

use crate::common::*;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};

#[derive(Default)]
struct Fake {
    requests: Mutex<Vec<Value>>,
    /// What the rewrite requests get.
    rewrite: Mutex<String>,
    /// Words in each answer.
    answer_words: Mutex<usize>,
}

fn kind(body: &Value) -> &'static str {
    let system = body["messages"][0]["content"].as_str().unwrap_or("");
    if system.contains("rewrite the user's follow-up") {
        "rewrite"
    } else if system.contains("summarise a conversation") {
        "summarize"
    } else {
        "answer"
    }
}

async fn completions(State(fake): State<Arc<Fake>>, body: axum::Json<Value>) -> Response {
    fake.requests.lock().unwrap().push(body.0.clone());
    let text = match kind(&body.0) {
        "rewrite" => fake.rewrite.lock().unwrap().clone(),
        "summarize" => "SUMMARY-MARKER: the user asked about lanterns and bells.".to_string(),
        _ => {
            let n = *fake.answer_words.lock().unwrap();
            let mut t = String::from("Twelve lanterns [1].");
            for i in 0..n {
                t.push_str(&format!(" word{i}"));
            }
            t
        }
    };
    let mut out = String::new();
    for piece in text.split_inclusive(' ') {
        let v = json!({"choices": [{"index": 0, "delta": {"content": piece}}]});
        out.push_str(&format!("data: {v}\n\n"));
    }
    let fin = json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]});
    out.push_str(&format!("data: {fin}\n\n"));
    out.push_str(&format!(
        "data: {}\n\n",
        json!({"choices": [], "usage": {"prompt_tokens": 321, "completion_tokens": 12}})
    ));
    out.push_str("data: [DONE]\n\n");
    ([("content-type", "text/event-stream")], out).into_response()
}

fn start_fake() -> (String, Arc<Fake>) {
    let fake = Arc::new(Fake::default());
    *fake.rewrite.lock().unwrap() =
        "What is the maximum compression level of gzip.GzipFile?".into();
    let app = axum::Router::new()
        .route("/v1/chat/completions", post(completions))
        .with_state(fake.clone());
    (serve_upstream(app), fake)
}

fn ask(s: &Server, body: Value) -> (Value, Value, Value) {
    let ev = s.ask_sse(&body);
    let (last, done) = ev.last().unwrap().clone();
    assert_eq!(last, "done", "{ev:?}");
    let sources = ev.iter().find(|(e, _)| e == "sources").unwrap().1.clone();
    (ev[0].1.clone(), sources, done)
}

fn upload(s: &Server, c: &str, files: &[(&str, &str)]) {
    for (name, text) in files {
        let (st, up) = s.upload(c, &[(name, text.as_bytes().to_vec())]);
        assert_eq!(st, 202, "{up}");
        let job = s.wait_job(up["documents"][0]["job_id"].as_str().unwrap());
        assert_eq!(job["status"], "done", "{job}");
    }
}

const DOCS: &[(&str, &str)] = &[
    (
        "gzip.md",
        "# gzip\n\nThe gzip.GzipFile class compresses with compresslevel 9 by default; \
         the maximum compression level is 9 and the minimum is 0.\n",
    ),
    (
        "bash.md",
        "# Bash history\n\nThe value of HISTSIZE is 500 by default: Bash keeps 500 lines of command history.\n",
    ),
    (
        "bells.md",
        "# Bells\n\nThe harbour bell rings four times at noon and the chapel bell rings once at dusk.\n",
    ),
];

const Q1: &str = "What compression level does gzip.GzipFile use by default?";

#[test]
fn conversations_with_the_extractive_answerer() {
    let s = Server::start();
    upload(&s, "conv", DOCS);

    // A new conversation on request: its id comes back in meta.
    let (meta, _, done) = ask(
        &s,
        json!({"collection": "conv", "question": Q1, "conversation": true}),
    );
    let id = meta["conversation_id"].as_str().unwrap().to_string();
    assert_eq!(done["conversation"]["turn"], 1);
    assert_eq!(done["conversation"]["rewritten"], false);

    // A follow-up that refers back: rewritten by rule, and it retrieves the gzip document.
    let (meta, sources, done) = ask(
        &s,
        json!({"collection": "conv", "question": "What about its maximum?", "conversation_id": id}),
    );
    assert_eq!(meta["conversation_id"], id.as_str());
    let c = &done["conversation"];
    assert_eq!(c["turn"], 2);
    assert_eq!(c["rewritten"], true, "{done}");
    assert_eq!(c["rewrite_method"], "rule");
    let standalone = c["standalone_question"].as_str().unwrap();
    assert!(
        standalone.starts_with("What about its maximum?") && standalone.contains("gzip.GzipFile"),
        "{standalone}"
    );
    assert_eq!(sources[0]["doc_name"], "gzip.md", "{sources}");
    assert!(done["answer"].as_str().unwrap().contains('9'), "{done}");

    // One that stands alone is not rewritten.
    let (_, sources, done) = ask(
        &s,
        json!({"collection": "conv", "question": "How many lines of command history does Bash keep by default?", "conversation_id": id}),
    );
    assert_eq!(done["conversation"]["rewritten"], false, "{done}");
    assert_eq!(
        done["conversation"]["standalone_question"],
        "How many lines of command history does Bash keep by default?"
    );
    assert_eq!(sources[0]["doc_name"], "bash.md");

    // A client-chosen id starts a conversation too; a malformed one is refused.
    let (meta, _, _) = ask(
        &s,
        json!({"collection": "conv", "question": "When does the chapel bell ring?", "conversation_id": "client-chosen_1"}),
    );
    assert_eq!(meta["conversation_id"], "client-chosen_1");
    let (st, v) = s.post_json(
        "/v1/ask",
        &json!({"collection": "conv", "question": "x y z w", "conversation_id": "bad id!", "stream": false}),
    );
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (400, Some("invalid_conversation_id"))
    );

    // The turns, the list (newest first), delete, 404s.
    let (st, conv) = s.get(&format!("/v1/conversations/{id}"));
    assert_eq!(st, 200);
    assert_eq!(conv["turn_count"], 3);
    let turns = conv["turns"].as_array().unwrap();
    assert_eq!(turns[0]["question"], Q1);
    assert_eq!(turns[1]["question"], "What about its maximum?");
    assert_eq!(turns[1]["standalone_question"], standalone);
    assert!(turns[1]["answer"].as_str().unwrap().contains('9'));
    assert!(!turns[1]["citations"].as_array().unwrap().is_empty());
    let (_, list) = s.get("/v1/conversations");
    let ids: Vec<&str> = list["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["client-chosen_1", id.as_str()]);
    assert_eq!(s.delete(&format!("/v1/conversations/{id}")), 204);
    assert_eq!(s.get(&format!("/v1/conversations/{id}")).0, 404);
    assert_eq!(s.delete(&format!("/v1/conversations/{id}")), 404);
    let (st, v) = s.get("/v1/conversations/never-seen");
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (404, Some("conversation_not_found"))
    );
}

fn llm_server(url: &str, extra: &[(&str, &str)]) -> Server {
    let mut env = vec![
        ("KB_LLM__PROVIDER", "openai"),
        ("KB_LLM__MODEL", "fake-model"),
        ("KB_LLM__BASE_URL", url),
        ("KB_LLM__API_KEY", "sk-test"),
        ("KB_LLM__ROUTES__REWRITE", "cheap-model"),
        ("KB_LLM__ROUTES__SUMMARIZE", "cheap-model"),
        ("KB_LLM__PRICES__FAKE-MODEL__PROMPT_PER_1K", "0.5"),
        ("KB_LLM__PRICES__FAKE-MODEL__COMPLETION_PER_1K", "2"),
        ("KB_LLM__PRICES__CHEAP-MODEL__PROMPT_PER_1K", "0.01"),
        // The scripted answers are filler words no source supports: without this the
        // grounding guard would replace them with short extractive answers, and the history
        // would never grow enough to need a summary.
        ("KB_LLM__GUARD", "off"),
    ];
    env.extend_from_slice(extra);
    Server::start_with(&env)
}

#[test]
fn usage_and_cost_are_reported_and_aggregated() {
    let (url, _fake) = start_fake();
    let s = llm_server(&url, &[]);
    upload(&s, "u", DOCS);
    let since = (chrono::Utc::now() - chrono::Duration::minutes(1)).to_rfc3339();
    let q = json!({"collection": "u", "question": "How many lanterns are there?"});
    let (meta, _, done) = ask(&s, q.clone());
    assert_eq!(meta["cached"], false);
    let u = &done["usage"];
    assert_eq!(
        (u["prompt_tokens"].as_u64(), u["completion_tokens"].as_u64()),
        (Some(321), Some(12))
    );
    // 321 * 0.5 / 1000 + 12 * 2 / 1000
    let cost = 321.0 * 0.5 / 1000.0 + 12.0 * 2.0 / 1000.0;
    assert!((u["cost_usd"].as_f64().unwrap() - cost).abs() < 1e-9, "{u}");
    assert_eq!(u["calls"][0]["task"], "answer");
    assert_eq!(done["routing"]["answer"], "fake-model");
    // From the cache: no new usage.
    let (meta, _, done) = ask(&s, q);
    assert_eq!(meta["cached"], true);
    assert_eq!(done["usage"]["cost_usd"], 0.0);

    let (st, v) = s.get(&format!("/v1/usage?since={}", urlencode(&since)));
    assert_eq!(st, 200, "{v}");
    let rows = v["usage"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{v}");
    let r = &rows[0];
    assert_eq!(
        (r["collection"].as_str(), r["model"].as_str()),
        (Some("u"), Some("fake-model"))
    );
    assert_eq!(r["requests"], 2);
    assert_eq!(r["cache_hits"], 1);
    assert_eq!(
        (r["prompt_tokens"].as_i64(), r["completion_tokens"].as_i64()),
        (Some(321), Some(12))
    );
    assert!((r["cost_usd"].as_f64().unwrap() - cost).abs() < 1e-9);
    assert!((v["total"]["cost_usd"].as_f64().unwrap() - cost).abs() < 1e-9);
    let future = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let (_, v) = s.get(&format!("/v1/usage?since={}", urlencode(&future)));
    assert!(v["usage"].as_array().unwrap().is_empty());
    assert_eq!(s.get("/v1/usage?since=yesterday").0, 400);
}

fn urlencode(s: &str) -> String {
    s.replace('+', "%2B").replace(':', "%3A")
}

#[test]
fn conversations_with_an_llm_rewrite_route_and_summaries_within_budget() {
    let (url, fake) = start_fake();
    let window = 1500usize;
    let reserve = 200usize;
    let s = llm_server(
        &url,
        &[
            ("KB_LLM__CONTEXT_WINDOW", "1500"),
            ("KB_LLM__MAX_ANSWER_TOKENS", "200"),
            ("KB_CONVERSATIONS__HISTORY_TOKENS", "400"),
            ("KB_CONVERSATIONS__KEEP_TURNS", "2"),
        ],
    );
    upload(&s, "c", DOCS);
    let answers = |f: &Fake| -> Vec<Value> {
        f.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|r| kind(r) == "answer")
            .cloned()
            .collect()
    };

    let (meta, _, _) = ask(
        &s,
        json!({"collection": "c", "question": Q1, "conversation": true}),
    );
    let id = meta["conversation_id"].as_str().unwrap().to_string();
    // The follow-up is rewritten by the rewrite route's model, and retrieval uses the rewrite.
    let (_, sources, done) = ask(
        &s,
        json!({"collection": "c", "question": "What about its maximum?", "conversation_id": id}),
    );
    let c = &done["conversation"];
    assert_eq!(
        (c["rewritten"].as_bool(), c["rewrite_method"].as_str()),
        (Some(true), Some("llm"))
    );
    assert_eq!(
        c["standalone_question"],
        "What is the maximum compression level of gzip.GzipFile?"
    );
    assert_eq!(done["routing"]["rewrite"], "cheap-model", "{done}");
    assert_eq!(done["routing"]["answer"], "fake-model");
    assert_eq!(sources[0]["doc_name"], "gzip.md");
    let reqs = fake.requests.lock().unwrap().clone();
    let rw: Vec<&Value> = reqs.iter().filter(|r| kind(r) == "rewrite").collect();
    assert_eq!(rw.len(), 1);
    assert_eq!(rw[0]["model"], "cheap-model");
    assert!(rw[0]["messages"][1]["content"]
        .as_str()
        .unwrap()
        .contains(Q1));
    // The answer prompt carries the history: the first turn as user/assistant messages.
    let last = answers(&fake).last().unwrap().clone();
    assert_eq!(last["model"], "fake-model");
    let msgs = last["messages"].as_array().unwrap();
    assert_eq!(msgs[1], json!({"role": "user", "content": Q1}), "{last}");
    assert_eq!(msgs[2]["role"], "assistant");
    assert!(msgs.last().unwrap()["content"]
        .as_str()
        .unwrap()
        .ends_with("What is the maximum compression level of gzip.GzipFile?"));
    // A rewrite call costs too, at its own model's price.
    let calls = done["usage"]["calls"].as_array().unwrap();
    assert!(calls
        .iter()
        .any(|c| c["task"] == "rewrite" && c["model"] == "cheap-model"));

    // A standalone question is not rewritten (no rewrite call).
    let before = fake.requests.lock().unwrap().len();
    let (_, _, done) = ask(
        &s,
        json!({"collection": "c", "question": "When does the chapel bell ring at dusk?", "conversation_id": id}),
    );
    assert_eq!(done["conversation"]["rewritten"], false);
    let after: Vec<Value> = fake.requests.lock().unwrap()[before..].to_vec();
    assert!(after.iter().all(|r| kind(r) != "rewrite"));

    // A long conversation: long answers, until history would overflow the window. The prompt
    // stays within the budget, and carries the summary once older turns are folded into it.
    *fake.answer_words.lock().unwrap() = 220;
    let bpe = tiktoken_rs::cl100k_base_singleton();
    let mut summarized = false;
    for i in 0..6 {
        let (_, _, done) = ask(
            &s,
            json!({"collection": "c", "question": format!("How many lanterns hang in hall number {i} of the harbour?"), "conversation_id": id}),
        );
        summarized |= done["conversation"]["summarized"] == true;
        assert!(
            done["conversation"]["history_tokens"].as_u64().unwrap() <= 400,
            "{done}"
        );
        let last = answers(&fake).last().unwrap().clone();
        let prompt_tokens: usize = last["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| bpe.encode_ordinary(m["content"].as_str().unwrap()).len() + 4)
            .sum();
        assert!(
            prompt_tokens <= window - reserve,
            "turn {i}: prompt of {prompt_tokens} tokens over the budget {}",
            window - reserve
        );
    }
    assert!(summarized);
    let last = answers(&fake).last().unwrap().clone();
    let msgs = last["messages"].as_array().unwrap();
    assert_eq!(msgs[1]["role"], "system");
    assert!(
        msgs[1]["content"]
            .as_str()
            .unwrap()
            .contains("SUMMARY-MARKER"),
        "{last}"
    );
    // The last turns stay verbatim: 2 kept turns = 4 messages between the summary and the question.
    assert_eq!(msgs.len(), 2 + 4 + 1, "{last}");
    let reqs = fake.requests.lock().unwrap().clone();
    assert!(reqs
        .iter()
        .filter(|r| kind(r) == "summarize")
        .all(|r| r["model"] == "cheap-model"));
    let (_, conv) = s.get(&format!("/v1/conversations/{id}"));
    assert_eq!(conv["turn_count"], 9);
    assert!(conv["summary"].as_str().unwrap().contains("SUMMARY-MARKER"));
    assert!(conv["summarized_upto"].as_i64().unwrap() >= 1);
}
