//! The error -> status table through the real router, in process (`Router::oneshot`, no
//! socket): each request that kb must refuse gets its code's status, kb's error shape (or
//! OpenAI's on the OpenAI-compatible routes), and the headers every response carries.

use crate::common::*;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use serde_json::{json, Value};
use tower::ServiceExt;

async fn app() -> (kb::App, tempfile::TempDir) {
    kb::set_extractor_binary(env!("CARGO_BIN_EXE_kb"));
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = kb::config::Config {
        data_dir: tmp.path().join("data"),
        models_dir: models_dir(),
        ..Default::default()
    };
    cfg.embedding.threads = 1;
    (kb::App::build(cfg).await.unwrap(), tmp)
}

async fn send(app: &kb::App, req: Request<Body>) -> (StatusCode, axum::http::HeaderMap, Value) {
    let resp = app.router.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, headers, body)
}

fn post_json(path: &str, body: &str) -> Request<Body> {
    Request::post(path)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .unwrap()
}

#[tokio::test]
async fn refusals_get_their_codes_status_and_shape() {
    let (app, _tmp) = app().await;
    let long = "x".repeat(app.core.config.limits.max_question_chars + 1);
    let cases: Vec<(Request<Body>, StatusCode, &str)> = vec![
        (
            Request::get("/no/such/route").body(Body::empty()).unwrap(),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            Request::post("/v1/ask")
                .header(header::CONTENT_TYPE, "text/plain")
                .body(Body::from("{}"))
                .unwrap(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            post_json("/v1/ask", "{not json"),
            StatusCode::BAD_REQUEST,
            "malformed_json",
        ),
        (
            post_json("/v1/ask", r#"{"question": 42}"#),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
        (
            post_json("/v1/ask", r#"{"question": "q", "nope": 1}"#),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
        (
            post_json("/v1/ask", r#"{"question": "   "}"#),
            StatusCode::BAD_REQUEST,
            "empty_question",
        ),
        (
            post_json("/v1/ask", &json!({"question": long}).to_string()),
            StatusCode::PAYLOAD_TOO_LARGE,
            "question_too_long",
        ),
        (
            post_json(
                "/v1/ask",
                &format!(r#"{{"question": "{}"}}"#, "x".repeat(3 << 20)),
            ),
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
        ),
        (
            post_json("/v1/search", r#"{"query": "q", "top_k": 0}"#),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_top_k",
        ),
        (
            post_json("/v1/search", r#"{"query": "q", "mode": "fuzzy"}"#),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_mode",
        ),
        (
            post_json("/v1/ask", r#"{"question": "q", "collection": "-bad"}"#),
            StatusCode::BAD_REQUEST,
            "invalid_collection",
        ),
        (
            post_json("/v1/ask", r#"{"question": "q", "collection": "nothere"}"#),
            StatusCode::NOT_FOUND,
            "collection_not_found",
        ),
        (
            post_json("/v1/search", r#"{"query": "q", "collection": "nothere"}"#),
            StatusCode::NOT_FOUND,
            "collection_not_found",
        ),
        (
            post_json(
                "/v1/ask",
                r#"{"question": "q", "conversation_id": "has space"}"#,
            ),
            StatusCode::BAD_REQUEST,
            "invalid_conversation_id",
        ),
        (
            Request::get("/v1/documents/nope")
                .body(Body::empty())
                .unwrap(),
            StatusCode::NOT_FOUND,
            "document_not_found",
        ),
        (
            Request::get("/v1/jobs/nope").body(Body::empty()).unwrap(),
            StatusCode::NOT_FOUND,
            "job_not_found",
        ),
        (
            Request::delete("/v1/conversations/nope")
                .body(Body::empty())
                .unwrap(),
            StatusCode::NOT_FOUND,
            "conversation_not_found",
        ),
        (
            Request::get("/v1/usage?since=yesterday")
                .body(Body::empty())
                .unwrap(),
            StatusCode::BAD_REQUEST,
            "invalid_since",
        ),
        (
            Request::post("/v1/collections/docs/documents")
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from("{}"))
                .unwrap(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "expected_multipart",
        ),
    ];
    for (req, status, code) in cases {
        let what = format!("{} {}", req.method(), req.uri());
        let (s, headers, body) = send(&app, req).await;
        assert_eq!(s, status, "{what}: {body}");
        assert_eq!(body["error"]["code"], code, "{what}: {body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{what}: {body}"
        );
        assert_eq!(headers["x-content-type-options"], "nosniff", "{what}");
        assert!(headers.contains_key("x-request-id"), "{what}");
        assert!(!headers.contains_key(header::RETRY_AFTER), "{what}");
    }
    app.core.shutdown().await;
}

#[tokio::test]
async fn openai_routes_refuse_in_openai_shape_from_the_same_codes() {
    let (app, _tmp) = app().await;
    let chat = |body: Value| post_json("/v1/chat/completions", &body.to_string());
    let long = "x".repeat(app.core.config.limits.max_question_chars + 1);
    let cases = vec![
        (
            chat(json!({"model": "kb/nothere", "messages": [{"role": "user", "content": "q"}]})),
            StatusCode::NOT_FOUND,
            "model_not_found",
            Some("model"),
        ),
        (
            chat(json!({"model": "kb", "messages": []})),
            StatusCode::BAD_REQUEST,
            "empty_array",
            Some("messages"),
        ),
        (
            chat(json!({"model": "kb", "n": 2, "messages": [{"role": "user", "content": "q"}]})),
            StatusCode::BAD_REQUEST,
            "unsupported_value",
            Some("n"),
        ),
        (
            post_json("/v1/chat/completions", "{"),
            StatusCode::BAD_REQUEST,
            "malformed_json",
            None,
        ),
    ];
    for (req, status, code, param) in cases {
        let (s, _, body) = send(&app, req).await;
        assert_eq!(s, status, "{body}");
        assert_eq!(body["error"]["code"], code, "{body}");
        assert_eq!(body["error"]["type"], "invalid_request_error", "{body}");
        assert_eq!(body["error"]["param"].as_str(), param, "{body}");
    }
    // A question kb cannot take is a 400 here (413 on /v1/ask), with the same code; it needs
    // an existing collection to get that far.
    upload(
        &app,
        "default",
        "a.md",
        "# A\n\nSome text about alpaca wool.\n",
    )
    .await;
    let (s, _, body) = send(
        &app,
        chat(json!({"model": "kb", "messages": [{"role": "user", "content": long}]})),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["code"], "question_too_long", "{body}");
    assert_eq!(body["error"]["param"], "messages", "{body}");
    app.core.shutdown().await;
}

/// Upload one text file as multipart and wait until its job is done.
async fn upload(app: &kb::App, collection: &str, name: &str, text: &str) {
    let boundary = "kbtestboundary";
    let body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\nContent-Type: text/markdown\r\n\r\n{text}\r\n--{boundary}--\r\n"
    );
    let req = Request::post(format!("/v1/collections/{collection}/documents"))
        .header(
            header::CONTENT_TYPE,
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(Body::from(body))
        .unwrap();
    let (s, _, body) = send(app, req).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{body}");
    let job = body["documents"][0]["job_id"].as_str().unwrap().to_string();
    for _ in 0..600 {
        let (_, _, j) = send(
            app,
            Request::get(format!("/v1/jobs/{job}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        match j["status"].as_str() {
            Some("done") => return,
            Some("failed") => panic!("job failed: {j}"),
            _ => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
        }
    }
    panic!("job {job} did not finish");
}

#[tokio::test]
async fn accept_is_matched_case_insensitively() {
    let (app, _tmp) = app().await;
    upload(
        &app,
        "default",
        "wool.md",
        "# Wool\n\nAlpaca wool is warm and soft.\n",
    )
    .await;
    for accept in [
        "application/json",
        "APPLICATION/JSON",
        "Application/Json; q=1",
    ] {
        let req = Request::post("/v1/ask")
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::ACCEPT, accept)
            .body(Body::from(r#"{"question": "Is alpaca wool warm?"}"#))
            .unwrap();
        let resp = app.router.clone().oneshot(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let ct = resp.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .to_string();
        assert!(ct.starts_with("application/json"), "{accept}: {ct}");
    }
    // Naming both prefers the stream, as before.
    let req = Request::post("/v1/ask")
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::ACCEPT, "application/json, TEXT/EVENT-STREAM")
        .body(Body::from(r#"{"question": "Is alpaca wool warm?"}"#))
        .unwrap();
    let resp = app.router.clone().oneshot(req).await.unwrap();
    let ct = resp.headers()[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .to_string();
    assert!(ct.starts_with("text/event-stream"), "{ct}");
    app.core.shutdown().await;
}
