//! API keys and tenant isolation (`auth.mode = "keys"`), the Host and Origin checks, and the
//! refusal to serve without keys on a non-loopback address.

use crate::common::*;
use serde_json::{json, Value};
use std::process::Command;
use std::time::Duration;

/// Requests as one key.
struct As<'a> {
    s: &'a Server,
    key: String,
}

impl As<'_> {
    fn req(&self, method: reqwest::Method, path: &str) -> reqwest::blocking::RequestBuilder {
        Server::client()
            .request(method, self.s.url(path))
            .bearer_auth(&self.key)
    }

    fn get(&self, path: &str) -> (u16, Value) {
        let r = self.req(reqwest::Method::GET, path).send().unwrap();
        (r.status().as_u16(), r.json().unwrap_or(Value::Null))
    }

    fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let r = self
            .req(reqwest::Method::POST, path)
            .json(&body)
            .send()
            .unwrap();
        (r.status().as_u16(), r.json().unwrap_or(Value::Null))
    }

    fn delete(&self, path: &str) -> u16 {
        self.req(reqwest::Method::DELETE, path)
            .send()
            .unwrap()
            .status()
            .as_u16()
    }

    fn upload(&self, collection: &str, name: &str, body: &[u8]) -> (u16, Value) {
        let form = reqwest::blocking::multipart::Form::new().part(
            "file",
            reqwest::blocking::multipart::Part::bytes(body.to_vec()).file_name(name.to_string()),
        );
        let r = self
            .req(
                reqwest::Method::POST,
                &format!("/v1/collections/{collection}/documents"),
            )
            .multipart(form)
            .send()
            .unwrap();
        (r.status().as_u16(), r.json().unwrap_or(Value::Null))
    }

    fn wait(&self, job: &str) -> Value {
        let mut last = Value::Null;
        wait_until("job finished", Duration::from_secs(120), || {
            last = self.get(&format!("/v1/jobs/{job}")).1;
            last["status"] == "done" || last["status"] == "failed"
        });
        last
    }
}

/// Keys A (collection a) and B (collection b): A never sees b's documents, chunks, answers,
/// jobs, conversations, models or usage, and gets 403 on b's name or 404 on b's ids; a key is
/// needed on every /v1 route, a revoked key stops at once, and admin actions are recorded.
#[test]
fn keys_keep_tenants_apart() {
    let s = Server::start_with(&[("KB_AUTH__MODE", "keys")]);
    // An admin key from the CLI, on the data dir of the running server.
    let out = kb_cli(
        &s.data_dir,
        &[
            "keys", "create", "--name", "ops", "--scope", "admin", "--json",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let made: Value = serde_json::from_slice(&out.stdout).unwrap();
    let admin = As {
        s: &s,
        key: made["key"].as_str().unwrap().to_string(),
    };
    assert!(admin.key.starts_with("kb_"));
    // Only the hash is stored.
    let catalog = std::fs::read(s.data_dir.join("catalog.db")).unwrap();
    assert!(
        !catalog
            .windows(admin.key.len())
            .any(|w| w == admin.key.as_bytes()),
        "the key itself is in the catalog"
    );
    let make = |name: &str, scopes: &[&str]| {
        let (st, v) = admin.post("/v1/keys", json!({"name": name, "scopes": scopes}));
        assert_eq!(st, 201, "{v}");
        (
            As {
                s: &s,
                key: v["key"].as_str().unwrap().to_string(),
            },
            v["id"].as_str().unwrap().to_string(),
        )
    };
    let (a, a_id) = make("tenant-a", &["read:a", "write:a"]);
    let (b, _) = make("tenant-b", &["read:b", "write:b"]);
    let (bad, _) = (
        admin.post("/v1/keys", json!({"name": "x", "scopes": ["root"]})),
        (),
    );
    assert_eq!(bad.0, 400, "{}", bad.1);

    // No key, a wrong key: 401 with a Bearer challenge; health stays open.
    let r = Server::client()
        .get(s.url("/v1/collections"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    let wrong = As {
        s: &s,
        key: "kb_not-a-key".into(),
    };
    assert_eq!(wrong.get("/v1/collections").0, 401);
    assert_eq!(s.get("/healthz").0, 200);
    assert_eq!(
        Server::client()
            .get(s.url("/metrics"))
            .send()
            .unwrap()
            .status(),
        401
    );
    assert_eq!(
        admin
            .req(reqwest::Method::GET, "/metrics")
            .send()
            .unwrap()
            .status(),
        200
    );

    // Each writes its own collection only.
    let (st, up_a) = a.upload(
        "a",
        "harbour.md",
        b"# Harbour\n\nThe harbour master of A keeps the red ledger.\n",
    );
    assert_eq!(st, 202, "{up_a}");
    assert_eq!(a.upload("b", "x.md", b"# X\n\nx\n").0, 403);
    let (st, up_b) = b.upload(
        "b",
        "vault.md",
        b"# Vault\n\nThe vault code of tenant B is 4711.\n",
    );
    assert_eq!(st, 202, "{up_b}");
    a.wait(up_a["documents"][0]["job_id"].as_str().unwrap());
    let b_job = up_b["documents"][0]["job_id"].as_str().unwrap();
    b.wait(b_job);
    let b_doc = up_b["documents"][0]["document_id"].as_str().unwrap();

    // A's view: only a.
    let (_, list) = a.get("/v1/collections");
    let names: Vec<&str> = list["collections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a"]);
    assert_eq!(a.get("/v1/collections/b").0, 403);
    assert_eq!(a.get("/v1/collections/b/documents").0, 403);
    assert_eq!(a.get(&format!("/v1/documents/{b_doc}")).0, 404);
    assert_eq!(a.delete(&format!("/v1/documents/{b_doc}")), 404);
    assert_eq!(a.get(&format!("/v1/jobs/{b_job}")).0, 404);
    assert_eq!(a.get(&format!("/v1/jobs/{b_job}/events")).0, 404);
    // Asked for both jobs at once, A sees its own only.
    let a_job = up_a["documents"][0]["job_id"].as_str().unwrap();
    let (st, both) = a.get(&format!("/v1/jobs?ids={a_job},{b_job},nope"));
    assert_eq!(st, 200, "{both}");
    let seen: Vec<&str> = both["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap())
        .collect();
    assert_eq!(seen, [a_job]);
    assert_eq!(both["jobs"][0]["status"], "done");
    assert_eq!(
        b.get(&format!("/v1/jobs?ids={a_job},{b_job}")).1["jobs"][0]["id"],
        b_job
    );
    assert_eq!(a.get("/v1/jobs").0, 400);
    assert_eq!(a.delete("/v1/collections/b"), 403);
    let q = json!({"collection": "b", "query": "vault code", "top_k": 5});
    assert_eq!(a.post("/v1/search", q).0, 403);
    let ask_b = json!({"collection": "b", "question": "What is the vault code?", "stream": false});
    assert_eq!(a.post("/v1/ask", ask_b.clone()).0, 403);
    let (st, chat) = a.post(
        "/v1/chat/completions",
        json!({"model": "kb/b", "messages": [{"role": "user", "content": "What is the vault code?"}]}),
    );
    assert_eq!(st, 404, "{chat}");
    let (_, models) = a.get("/v1/models");
    assert!(!models.to_string().contains("kb/b"), "{models}");
    // A's own search finds nothing of b's.
    let (st, found) = a.post(
        "/v1/search",
        json!({"collection": "a", "query": "vault code 4711", "top_k": 10}),
    );
    assert_eq!(st, 200);
    assert!(!found.to_string().contains("4711"), "{found}");

    // Conversations belong to their key; answers cached for b are not A's.
    let (st, conv) = b.post(
        "/v1/ask",
        json!({"collection": "b", "question": "What is the vault code?", "stream": false, "conversation": true}),
    );
    assert_eq!(st, 200, "{conv}");
    assert!(conv["answer"].as_str().unwrap().contains("4711"), "{conv}");
    let conv_id = conv["meta"]["conversation_id"].as_str().unwrap();
    let (_, mine) = a.get("/v1/conversations");
    assert_eq!(mine["conversations"], json!([]), "{mine}");
    assert_eq!(a.get(&format!("/v1/conversations/{conv_id}")).0, 404);
    assert_eq!(a.delete(&format!("/v1/conversations/{conv_id}")), 404);
    let (st, v) = a.post(
        "/v1/ask",
        json!({"collection": "a", "question": "What is the vault code?", "stream": false, "conversation_id": conv_id}),
    );
    assert_eq!(st, 404, "{v}");
    let (st, own) = a.post(
        "/v1/ask",
        json!({"collection": "a", "question": "What is the vault code?", "stream": false}),
    );
    assert_eq!(st, 200);
    assert_eq!(own["meta"]["cached"], false);
    assert!(!own.to_string().contains("4711"), "{own}");
    assert_eq!(
        b.get("/v1/conversations").1["conversations"][0]["id"],
        conv_id
    );
    // Usage: A sees a's rows only.
    let (_, usage) = a.get("/v1/usage");
    assert!(
        usage["usage"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["collection"] == "a"),
        "{usage}"
    );

    // Admin routes are admin's.
    assert_eq!(a.get("/v1/keys").0, 403);
    assert_eq!(a.get("/v1/audit").0, 403);
    let (_, keys) = admin.get("/v1/keys");
    assert_eq!(keys["keys"].as_array().unwrap().len(), 3, "{keys}");
    assert!(
        !keys.to_string().contains(&a.key),
        "a key is listed: {keys}"
    );

    // Deletes are recorded; a revoked key stops at once.
    assert_eq!(b.delete(&format!("/v1/documents/{b_doc}")), 204);
    assert_eq!(admin.delete(&format!("/v1/keys/{a_id}")), 204);
    assert_eq!(a.get("/v1/collections").0, 401);
    assert_eq!(admin.delete(&format!("/v1/keys/{a_id}")), 404);
    let (_, log) = admin.get("/v1/audit");
    let actions: Vec<&str> = log["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for want in ["key.create", "document.delete", "key.revoke"] {
        assert!(actions.contains(&want), "{want} not in {actions:?}");
    }
    // The CLI lists the revoked key as such.
    let out = kb_cli(&s.data_dir, &["keys", "list"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines()
            .any(|l| l.starts_with(&a_id) && l.contains("revoked")),
        "{text}"
    );
    // A client with KB_API_KEY against the server.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kb"));
    scrub_kb_env(&mut cmd);
    let out = cmd
        .args(["docs", "list", "-c", "a", "--server", &s.base])
        .env("KB_API_KEY", &admin.key)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("harbour.md"));
}

/// DNS rebinding and cross-site requests: a Host this server does not answer to, and a
/// state-changing request from another origin's page, are refused (403); the server's own
/// origin and clients that send no Origin (curl, SDKs) are not.
#[test]
fn foreign_hosts_and_origins_are_refused() {
    let s = Server::start();
    let c = Server::client();
    let r = c
        .get(s.url("/v1/collections"))
        .header("host", "evil.example:8080")
        .send()
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(
        r.json::<Value>().unwrap()["error"]["code"],
        "host_not_allowed"
    );
    let upload = |origin: Option<&str>| {
        let form = reqwest::blocking::multipart::Form::new().part(
            "file",
            reqwest::blocking::multipart::Part::bytes(b"# Note\n\nplanted\n".to_vec())
                .file_name("note.md"),
        );
        let mut rb = c
            .post(s.url("/v1/collections/site/documents"))
            .multipart(form);
        if let Some(o) = origin {
            rb = rb.header("origin", o);
        }
        let r = rb.send().unwrap();
        (
            r.status().as_u16(),
            r.json::<Value>().unwrap_or(Value::Null),
        )
    };
    let (st, v) = upload(Some("http://evil.example"));
    assert_eq!(st, 403, "{v}");
    assert_eq!(v["error"]["code"], "cross_origin_request");
    assert_eq!(upload(Some("null")).0, 403);
    assert_eq!(
        s.get("/v1/collections/site").0,
        404,
        "the refused upload created something"
    );
    let own = s.base.clone();
    assert_eq!(upload(Some(&own)).0, 202);
    assert_eq!(upload(None).0, 202);
    // Reads from elsewhere are not state-changing (CORS keeps their answers from the page).
    let r = c
        .get(s.url("/v1/collections"))
        .header("origin", "http://evil.example")
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("access-control-allow-origin").is_none());
}

/// Without keys kb will not listen on a non-loopback address unless told that something else
/// does the access control.
#[test]
fn no_keys_on_a_public_address_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let out = kb_cli(&tmp.path().join("data"), &["serve", "--addr", "0.0.0.0:0"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("refusing to serve") && err.contains("auth.mode"),
        "{err}"
    );
}

/// A key with its own rate: past it, 429 `rate_limited` with Retry-After, while other keys go on.
#[test]
fn a_key_with_a_rate_is_held_to_it() {
    let s = Server::start_with(&[("KB_AUTH__MODE", "keys")]);
    let out = kb_cli(
        &s.data_dir,
        &[
            "keys", "create", "--name", "slow", "--scope", "read:*", "--rpm", "3", "--json",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let made: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(made["rpm"], 3);
    let slow = As {
        s: &s,
        key: made["key"].as_str().unwrap().to_string(),
    };
    let out = kb_cli(
        &s.data_dir,
        &[
            "keys", "create", "--name", "free", "--scope", "read:*", "--json",
        ],
    );
    let free = As {
        s: &s,
        key: serde_json::from_slice::<Value>(&out.stdout).unwrap()["key"]
            .as_str()
            .unwrap()
            .to_string(),
    };
    for _ in 0..3 {
        assert_eq!(slow.get("/v1/collections").0, 200);
    }
    let r = slow
        .req(reqwest::Method::GET, "/v1/collections")
        .send()
        .unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    assert_eq!(r.json::<Value>().unwrap()["error"]["code"], "rate_limited");
    for _ in 0..5 {
        assert_eq!(free.get("/v1/collections").0, 200);
    }
}

/// A FAULT INJECTOR standing in for a model that reports 150 tokens per answer.
async fn counted_model() -> axum::response::Response {
    use axum::response::IntoResponse;
    let body = format!(
        "data: {}\n\ndata: {}\n\ndata: [DONE]\n\n",
        json!({"choices": [{"index": 0, "delta": {"content": "It opens at seven [1]."}}]}),
        json!({"choices": [], "usage": {"prompt_tokens": 100, "completion_tokens": 50}})
    );
    ([("content-type", "text/event-stream")], body).into_response()
}

/// Keys with a token allowance per minute and per day: once the model calls made for a key
/// reach it, 429 (`rate_limited` / `token_budget_exhausted`) with Retry-After; other keys go on.
#[test]
fn token_allowances_per_key() {
    let upstream = serve_upstream(
        axum::Router::new().route("/v1/chat/completions", axum::routing::post(counted_model)),
    );
    let s = Server::start_with(&[
        ("KB_AUTH__MODE", "keys"),
        ("KB_LLM__PROVIDER", "openai"),
        ("KB_LLM__MODEL", "counted"),
        ("KB_LLM__BASE_URL", &upstream),
        ("KB_LLM__GUARD", "off"),
        ("KB_CACHE__ENABLED", "false"),
    ]);
    let key = |args: &[&str]| {
        let mut all = vec!["keys", "create", "--name", "k", "--scope", "*", "--json"];
        all.extend_from_slice(args);
        let out = kb_cli(&s.data_dir, &all);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        As {
            s: &s,
            key: v["key"].as_str().unwrap().to_string(),
        }
    };
    let writer = key(&[]);
    let (st, up) = writer.upload("t", "gate.md", b"# Gate\n\nThe gate opens at seven.\n");
    assert_eq!(st, 202, "{up}");
    writer.wait(up["documents"][0]["job_id"].as_str().unwrap());
    let ask = json!({"collection": "t", "question": "When does the gate open?", "stream": false});
    for (k, code) in [
        (key(&["--tpm", "200"]), "rate_limited"),
        (key(&["--daily-tokens", "200"]), "token_budget_exhausted"),
    ] {
        // 150 tokens each: the first two fit (0, then 150 used), the third does not.
        for i in 0..2 {
            let (st, v) = k.post("/v1/ask", ask.clone());
            assert_eq!(st, 200, "ask {i}: {v}");
        }
        let r = k
            .req(reqwest::Method::POST, "/v1/ask")
            .json(&ask)
            .send()
            .unwrap();
        assert_eq!(r.status(), 429, "{code}");
        assert!(r.headers().contains_key("retry-after"));
        assert_eq!(r.json::<Value>().unwrap()["error"]["code"], code);
    }
    assert_eq!(
        writer.post("/v1/ask", ask).0,
        200,
        "a key without allowances goes on"
    );
}

/// With `server.allowed_origins`, those origins get CORS answers and may post; others do not.
#[test]
fn listed_origins_get_cors_and_others_do_not() {
    let s = Server::start_with(&[("KB_SERVER__ALLOWED_ORIGINS", r#"["https://app.example"]"#)]);
    let c = Server::client();
    let pre = |origin: &str| {
        c.request(reqwest::Method::OPTIONS, s.url("/v1/search"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "content-type,authorization",
            )
            .send()
            .unwrap()
    };
    let ok = pre("https://app.example");
    assert_eq!(
        ok.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    let bad = pre("https://evil.example");
    assert!(bad.headers().get("access-control-allow-origin").is_none());
    let post = |origin: &str| {
        c.post(s.url("/v1/search"))
            .header("origin", origin)
            .json(&json!({"collection": "none", "query": "q"}))
            .send()
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(
        post("https://app.example"),
        404,
        "the listed origin reaches the handler"
    );
    assert_eq!(post("https://evil.example"), 403);
}
