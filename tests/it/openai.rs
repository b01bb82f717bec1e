//! The OpenAI-compatible API against a real server: models, completions streamed and not,
//! sources in the `kb` field, errors in OpenAI's shape.

use crate::common::*;
use serde_json::{json, Value};

const ZEPHYR: &str = "# Zephyr Deployment Guide\n\n\
## Ports\n\nThe zephyr daemon listens on port 7412 by default. Change it with the `listen_port` option.\n\n\
## Backups\n\nSnapshots of the zephyr catalog are written every 45 minutes to the spool directory.\n";

const LANTERNS: &str = "# Hall\n\nTwelve lanterns hang in the east hall of the museum.\n";

fn upload_ready(s: &Server, collection: &str, name: &str, text: &str) {
    let (st, up) = s.upload(collection, &[(name, text.as_bytes().to_vec())]);
    assert_eq!(st, 202, "{up}");
    let job = s.wait_job(up["documents"][0]["job_id"].as_str().unwrap());
    assert_eq!(job["status"], "done", "{job}");
}

/// POST /v1/chat/completions; the status, the x-request-id header and the raw body.
fn complete(s: &Server, body: &Value) -> (u16, String, String) {
    let r = Server::client()
        .post(s.url("/v1/chat/completions"))
        .json(body)
        .send()
        .unwrap();
    let status = r.status().as_u16();
    let request_id = r
        .headers()
        .get("x-request-id")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (status, request_id, r.text().unwrap())
}

fn openai_error(status: u16, body: &str, want_status: u16, param: Option<&str>, code: &str) {
    assert_eq!(status, want_status, "{body}");
    let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    let e = &v["error"];
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    assert_eq!(e["type"], "invalid_request_error", "{v}");
    assert_eq!(e["param"], json!(param), "{v}");
    assert_eq!(e["code"], code, "{v}");
}

/// The `data:` payloads of an SSE body, in order.
fn data_lines(body: &str) -> Vec<String> {
    body.split("\n\n")
        .filter_map(|block| {
            let d: Vec<&str> = block
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(|d| d.strip_prefix(' ').unwrap_or(d))
                .collect();
            (!d.is_empty()).then(|| d.join("\n"))
        })
        .collect()
}

#[test]
fn openai_compatible_api() {
    let s = Server::start();

    // No collection yet: an empty list, and the alias names nothing.
    let (st, v) = s.get("/v1/models");
    assert_eq!(st, 200, "{v}");
    assert_eq!(v, json!({"object": "list", "data": []}));

    upload_ready(&s, "docs", "zephyr.md", ZEPHYR);
    let (st, v) = s.get("/v1/models");
    assert_eq!(st, 200);
    let ids: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        ["kb/docs"],
        "no `kb` alias while there is no default collection"
    );
    let m = &v["data"][0];
    assert_eq!(m["object"], "model");
    assert_eq!(m["owned_by"], "kb");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let created = m["created"].as_i64().unwrap();
    assert!(
        (now - 600..=now + 5).contains(&created),
        "created is the collection's creation time in unix seconds: {created} vs {now}"
    );

    upload_ready(&s, "default", "hall.md", LANTERNS);
    let (_, v) = s.get("/v1/models");
    let ids: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["kb", "kb/default", "kb/docs"]);
    let (st, v) = s.get("/v1/models/kb/docs");
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["id"], "kb/docs");

    // Not streamed. The history is accepted; the last user message is the question; unused
    // OpenAI parameters are accepted.
    let (st, request_id, body) = complete(
        &s,
        &json!({
            "model": "kb/docs",
            "messages": [
                {"role": "system", "content": "Answer briefly."},
                {"role": "user", "content": "How often are zephyr catalog snapshots written?"},
                {"role": "assistant", "content": "Every 45 minutes [1]."},
                {"role": "user", "content": [{"type": "text", "text": "Which port does the zephyr daemon listen on by default?"}]},
            ],
            "temperature": 0.2, "top_p": 1, "max_tokens": 200, "n": 1, "user": "test",
            "presence_penalty": 0, "stream": false,
        }),
    );
    assert_eq!(st, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["id"], format!("chatcmpl-{request_id}"));
    assert_eq!(v["model"], "kb/docs");
    assert!(v["created"].as_i64().unwrap() >= now);
    let choice = &v["choices"][0];
    assert_eq!(v["choices"].as_array().unwrap().len(), 1);
    assert_eq!(choice["index"], 0);
    assert_eq!(choice["finish_reason"], "stop");
    assert_eq!(choice["message"]["role"], "assistant");
    let answer = choice["message"]["content"].as_str().unwrap().to_string();
    assert!(answer.contains("7412"), "{answer}");
    assert!(
        !answer.contains("45 minutes"),
        "answered the last question: {answer}"
    );
    let u = &v["usage"];
    assert_eq!(
        u["total_tokens"].as_u64().unwrap(),
        u["prompt_tokens"].as_u64().unwrap() + u["completion_tokens"].as_u64().unwrap(),
        "{u}"
    );
    // The sources and citations, for clients that look.
    let kb = &v["kb"];
    assert_eq!(kb["collection"], "docs");
    assert_eq!(kb["declined"], false);
    assert_eq!(kb["answerer"], "extractive");
    let sources = kb["sources"].as_array().unwrap();
    let cited = kb["citations"][0].as_u64().expect("a citation") as usize;
    assert!(answer.contains(&format!("[{cited}]")), "{answer}");
    let src = &sources[cited - 1];
    assert_eq!(src["n"], cited);
    assert_eq!(src["doc_name"], "zephyr.md");
    assert!(src["text"].as_str().unwrap().contains("7412"), "{src}");

    // Streamed, with usage: the same answer arrives in many chunks.
    let (st, request_id, body) = complete(
        &s,
        &json!({
            "model": "kb/docs",
            "messages": [{"role": "user", "content": "Which port does the zephyr daemon listen on by default?"}],
            "stream": true,
            "stream_options": {"include_usage": true},
        }),
    );
    assert_eq!(st, 200, "{body}");
    let data = data_lines(&body);
    assert_eq!(data.last().unwrap(), "[DONE]", "{body}");
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap_or_else(|e| panic!("{e}: {d}")))
        .collect();
    for c in &chunks {
        assert_eq!(c["object"], "chat.completion.chunk", "{c}");
        assert_eq!(c["id"], format!("chatcmpl-{request_id}"), "{c}");
        assert_eq!(c["model"], "kb/docs");
        assert!(c["created"].is_i64());
    }
    let first = &chunks[0];
    assert_eq!(first["choices"][0]["delta"]["role"], "assistant", "{first}");
    assert_eq!(
        first["kb"]["sources"][0]["doc_name"], "zephyr.md",
        "{first}"
    );
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]), "{usage}");
    assert!(usage["usage"]["total_tokens"].is_u64(), "{usage}");
    let fin = &chunks[chunks.len() - 2];
    assert_eq!(fin["choices"][0]["finish_reason"], "stop", "{fin}");
    assert_eq!(fin["choices"][0]["delta"], json!({}));
    assert_eq!(fin["kb"]["citations"], kb["citations"], "{fin}");
    assert_eq!(fin["kb"]["declined"], false);
    let content: Vec<&str> = chunks[1..chunks.len() - 2]
        .iter()
        .map(|c| {
            assert!(c["choices"][0]["finish_reason"].is_null(), "{c}");
            assert!(c["usage"].is_null(), "usage only on the last chunk: {c}");
            c["choices"][0]["delta"]["content"].as_str().unwrap()
        })
        .collect();
    assert!(content.len() > 3, "content arrives in pieces: {content:?}");
    assert_eq!(content.concat(), answer);

    // The alias answers from the default collection; without include_usage no usage chunk.
    let (st, _, body) = complete(
        &s,
        &json!({
            "model": "kb",
            "messages": [{"role": "user", "content": "How many lanterns hang in the east hall?"}],
            "stream": true,
        }),
    );
    assert_eq!(st, 200, "{body}");
    let data = data_lines(&body);
    assert_eq!(data.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "stop"
    );
    assert!(chunks.iter().all(|c| c.get("usage").is_none()));
    assert_eq!(chunks[0]["model"], "kb");
    assert_eq!(chunks[0]["kb"]["collection"], "default");
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert!(text.contains("Twelve lanterns"), "{text}");

    // Unknown models: 404 in OpenAI's shape, streamed or not, before any stream starts.
    let ask = |model: &str, stream: bool| {
        complete(
            &s,
            &json!({"model": model, "stream": stream, "messages": [{"role": "user", "content": "port?"}]}),
        )
    };
    for (model, stream) in [
        ("gpt-4o", false),
        ("kb/nope", false),
        ("kb/nope", true),
        ("kb/../docs", false),
        ("docs", true),
    ] {
        let (st, _, body) = ask(model, stream);
        openai_error(st, &body, 404, Some("model"), "model_not_found");
    }
    let (st, v) = s.get("/v1/models/kb/nope");
    openai_error(st, &v.to_string(), 404, Some("model"), "model_not_found");

    // Bad bodies: 400 in OpenAI's shape.
    let user = json!([{"role": "user", "content": "Which port?"}]);
    let cases = [
        (
            json!({"model": "kb/docs", "messages": []}),
            Some("messages"),
            "empty_array",
        ),
        (
            json!({"model": "kb/docs", "messages": [{"role": "system", "content": "hi"}]}),
            Some("messages"),
            "no_user_message",
        ),
        (
            json!({"model": "kb/docs", "messages": "Which port?"}),
            None,
            "invalid_request",
        ),
        (json!({"messages": user}), None, "invalid_request"),
        (
            json!({"model": "kb/docs", "messages": user, "stream": "yes"}),
            None,
            "invalid_request",
        ),
        (
            json!({"model": "kb/docs", "messages": [{"role": "user", "content": 7}]}),
            Some("messages[0].content"),
            "invalid_type",
        ),
        (
            json!({"model": "kb/docs", "messages": [{"role": "robot", "content": "x"}]}),
            Some("messages[0].role"),
            "invalid_value",
        ),
        (
            json!({"model": "kb/docs", "messages": [{"role": "user", "content": "  "}]}),
            Some("messages"),
            "empty_question",
        ),
        (
            json!({"model": "kb/docs", "messages": user, "n": 2}),
            Some("n"),
            "unsupported_value",
        ),
    ];
    for (body, param, code) in cases {
        let (st, _, text) = complete(&s, &body);
        openai_error(st, &text, 400, param, code);
    }
    let r = Server::client()
        .post(s.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body("{\"model\": \"kb/docs\", \"messages\": [")
        .send()
        .unwrap();
    let st = r.status().as_u16();
    openai_error(st, &r.text().unwrap(), 400, None, "malformed_json");
}
