//! A planted secret never leaves kb: not in responses (JSON, streams, errors), `/metrics`,
//! `/v1/info`, `kb config` or the log. The upstream is a FAULT INJECTOR: an OpenAI-compatible
//! stand-in that answers 400 with the request headers (the API key included) echoed in its
//! error, as some gateways do.

use crate::common::*;
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use serde_json::json;

const PLANTED: &str = "sk-planted-7f3a9c1e5b";

async fn echoing_upstream(headers: HeaderMap) -> axum::response::Response {
    let echoed: Vec<String> = headers
        .iter()
        .map(|(k, v)| format!("{k}: {}", v.to_str().unwrap_or("")))
        .collect();
    (
        axum::http::StatusCode::BAD_REQUEST,
        axum::Json(json!({"error": {"message": format!("bad request; headers were: {}", echoed.join(", "))}})),
    )
        .into_response()
}

#[test]
fn a_planted_api_key_appears_nowhere() {
    let upstream = serve_upstream(
        axum::Router::new()
            .route(
                "/v1/chat/completions",
                axum::routing::post(echoing_upstream),
            )
            .route("/v1/embeddings", axum::routing::post(echoing_upstream)),
    );
    let log = tempfile::NamedTempFile::new().unwrap();
    let env = [
        ("KB_LLM__PROVIDER", "openai"),
        ("KB_LLM__MODEL", "gw-model"),
        ("KB_LLM__BASE_URL", upstream.as_str()),
        ("KB_LLM__API_KEY", PLANTED),
        ("KB_LLM__MAX_RETRIES", "0"),
        ("KB_CACHE__ENABLED", "false"),
        ("KB_LOG", "debug"),
    ];
    let s = Server::start_logging_to(&env, log.path());
    let (st, up) = s.upload(
        "sec",
        &[("gate.md", b"# Gate\n\nThe gate opens at seven.\n".to_vec())],
    );
    assert_eq!(st, 202, "{up}");
    s.wait_job(up["documents"][0]["job_id"].as_str().unwrap());
    let c = Server::client();
    let mut seen = Vec::new();
    let q = json!({"collection": "sec", "question": "When does the gate open?"});
    let mut plain = q.clone();
    plain["stream"] = json!(false);
    seen.push(
        c.post(s.url("/v1/ask"))
            .json(&plain)
            .send()
            .unwrap()
            .text()
            .unwrap(),
    );
    seen.push(
        c.post(s.url("/v1/ask"))
            .json(&q)
            .send()
            .unwrap()
            .text()
            .unwrap(),
    );
    for stream in [false, true] {
        let body = json!({"model": "kb/sec", "stream": stream, "messages": [{"role": "user", "content": "When does the gate open?"}]});
        seen.push(
            c.post(s.url("/v1/chat/completions"))
                .json(&body)
                .send()
                .unwrap()
                .text()
                .unwrap(),
        );
    }
    for path in ["/metrics", "/v1/info", "/v1/usage", "/openapi.json"] {
        seen.push(c.get(s.url(path)).send().unwrap().text().unwrap());
    }
    // The upstream was reached and failed (its echo is what must not travel).
    assert!(
        seen[0].contains("upstream_error"),
        "the planted failure did not happen: {}",
        seen[0]
    );
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_kb"));
    scrub_kb_env(&mut cmd);
    let out = cmd
        .arg("config")
        .env("KB_LLM__API_KEY", PLANTED)
        .output()
        .unwrap();
    seen.push(String::from_utf8_lossy(&out.stdout).into_owned());
    drop(s);
    seen.push(std::fs::read_to_string(log.path()).unwrap());
    for (i, text) in seen.iter().enumerate() {
        assert!(
            !text.contains(PLANTED),
            "the key leaked in output {i}: {text}"
        );
        assert!(
            !text.contains("7f3a9c1e5b"),
            "part of the key leaked in output {i}"
        );
    }
}
