//! `GET /openapi.json` against a real server: an OpenAPI 3.x document that describes every
//! route the router serves (found in the source and confirmed on the live router), and whose
//! described responses and server-sent events match real ones.

use crate::common::*;
use serde_json::{json, Value};
use std::collections::BTreeSet;

const METHODS: &[&str] = &["get", "post", "put", "delete", "patch"];

/// Every `.route("path", method_router)` in `src/` (test modules excluded), as
/// (method, OpenAPI path). A route added anywhere without documentation fails the test.
fn source_routes() -> BTreeSet<(String, String)> {
    let mut files = Vec::new();
    let mut dirs = vec![root().join("src")];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                files.push(p);
            }
        }
    }
    let mut out = BTreeSet::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        // Test modules come last in kb's files.
        let text = text.split("#[cfg(test)]").next().unwrap();
        let code: String = text
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        for bad in [".nest(", ".route_service(", ".nest_service("] {
            assert!(
                !code.contains(bad),
                "{}: `{bad}` is not understood by this test's route scan; teach it",
                f.display()
            );
        }
        let mut rest = code.as_str();
        while let Some(i) = rest.find(".route(") {
            rest = &rest[i + ".route(".len()..];
            let (path, methods, after) = parse_route(rest)
                .unwrap_or_else(|| panic!("{}: cannot read a .route( call", f.display()));
            assert!(!methods.is_empty(), "{}: no method for {path}", f.display());
            let path = path.replace("{*", "{");
            for m in methods {
                out.insert((m, path.clone()));
            }
            rest = after;
        }
    }
    out
}

/// `"path", get(a).post(b).layer(..))` -> the path, the methods and the text after the call.
fn parse_route(s: &str) -> Option<(String, Vec<String>, &str)> {
    let s = s.trim_start().strip_prefix('"')?;
    let end = s.find('"')?;
    let path = s[..end].to_string();
    let s = s[end + 1..].trim_start().strip_prefix(',')?;
    let b = s.as_bytes();
    let (mut depth, mut i, mut in_str) = (0i32, 0usize, false);
    let mut methods = Vec::new();
    while i < b.len() {
        let c = b[i];
        if in_str {
            if c == b'\\' {
                i += 1;
            } else if c == b'"' {
                in_str = false;
            }
        } else if c == b'"' {
            in_str = true;
        } else if c == b'(' {
            if depth == 0 {
                // The identifier just before this parenthesis.
                let ident: String = s[..i]
                    .chars()
                    .rev()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect();
                let m = ident.as_str();
                if METHODS.contains(&m) || m == "any" || m == "on" {
                    assert!(m != "any" && m != "on", "{path}: `{m}` is not understood");
                    methods.push(ident.clone());
                }
            }
            depth += 1;
        } else if c == b')' {
            if depth == 0 {
                return Some((path, methods, &s[i + 1..]));
            }
            depth -= 1;
        }
        i += 1;
    }
    None
}

fn documented_routes(doc: &Value) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for m in METHODS.iter().chain(&["head", "options", "trace"]) {
            if item.get(*m).is_some() {
                out.insert((m.to_string(), path.clone()));
            }
        }
    }
    out
}

fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    match schema.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let name = r.strip_prefix("#/components/schemas/").unwrap();
            let s = &doc["components"]["schemas"][name];
            assert!(!s.is_null(), "no schema {name}");
            resolve(doc, s)
        }
        None => schema,
    }
}

/// The properties and required names of an object schema, through `allOf`.
fn object_parts(
    doc: &Value,
    schema: &Value,
    props: &mut serde_json::Map<String, Value>,
    req: &mut Vec<String>,
) {
    let schema = resolve(doc, schema);
    if let Some(all) = schema.get("allOf").and_then(Value::as_array) {
        for s in all {
            object_parts(doc, s, props, req);
        }
    }
    if let Some(p) = schema.get("properties").and_then(Value::as_object) {
        props.extend(p.clone());
    }
    if let Some(r) = schema.get("required").and_then(Value::as_array) {
        req.extend(r.iter().map(|v| v.as_str().unwrap().to_string()));
    }
}

fn type_ok(t: &str, v: &Value) -> bool {
    match t {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "integer" => v.is_i64() || v.is_u64(),
        "number" => v.is_number(),
        "boolean" => v.is_boolean(),
        "null" => v.is_null(),
        _ => true,
    }
}

/// Whether `v` matches `schema`, strictly: an object may have no field the schema does not name.
fn check(doc: &Value, schema: &Value, v: &Value, at: &str) -> Result<(), String> {
    let schema = resolve(doc, schema);
    for key in ["oneOf", "anyOf"] {
        if let Some(alts) = schema.get(key).and_then(Value::as_array) {
            let errs: Vec<String> = alts
                .iter()
                .filter_map(|s| check(doc, s, v, at).err())
                .collect();
            if errs.len() == alts.len() {
                return Err(format!(
                    "{at}: matches no alternative: {}",
                    errs.join(" | ")
                ));
            }
            return Ok(());
        }
    }
    match schema.get("type") {
        Some(Value::String(t)) if !type_ok(t, v) => return Err(format!("{at}: {v} is not {t}")),
        Some(Value::Array(ts)) if !ts.iter().any(|t| type_ok(t.as_str().unwrap(), v)) => {
            return Err(format!("{at}: {v} is none of {ts:?}"))
        }
        _ => {}
    }
    if let Some(e) = schema.get("enum").and_then(Value::as_array) {
        if !e.contains(v) {
            return Err(format!("{at}: {v} is not one of {e:?}"));
        }
    }
    if let Some(items) = schema.get("items") {
        if let Some(a) = v.as_array() {
            for (i, x) in a.iter().enumerate() {
                check(doc, items, x, &format!("{at}[{i}]"))?;
            }
        }
    }
    if schema.get("properties").is_some() || schema.get("allOf").is_some() {
        let Some(obj) = v.as_object() else {
            return Err(format!("{at}: {v} is not an object"));
        };
        let (mut props, mut req) = (serde_json::Map::new(), Vec::new());
        object_parts(doc, schema, &mut props, &mut req);
        for r in &req {
            if !obj.contains_key(r) {
                return Err(format!("{at}: required `{r}` is missing"));
            }
        }
        for (k, x) in obj {
            let Some(p) = props.get(k) else {
                return Err(format!("{at}: `{k}` is not described"));
            };
            check(doc, p, x, &format!("{at}.{k}"))?;
        }
    }
    Ok(())
}

fn response_schema<'a>(
    doc: &'a Value,
    method: &str,
    path: &str,
    status: u16,
    ctype: &str,
) -> &'a Value {
    let s =
        &doc["paths"][path][method]["responses"][status.to_string()]["content"][ctype]["schema"];
    assert!(
        !s.is_null(),
        "{method} {path}: no {status} {ctype} response described"
    );
    s
}

fn assert_matches(doc: &Value, method: &str, path: &str, status: u16, ctype: &str, v: &Value) {
    let schema = response_schema(doc, method, path, status, ctype);
    if let Err(e) = check(doc, schema, v, "$") {
        panic!("{method} {path} {status}: the real response does not match the description: {e}\n{v:#}");
    }
}

fn get_text(s: &Server, path: &str) -> (u16, String) {
    let r = Server::client().get(s.url(path)).send().unwrap();
    (r.status().as_u16(), r.text().unwrap())
}

#[test]
fn the_openapi_document_is_complete_and_matches_real_responses() {
    let s = Server::start();
    let r = Server::client().get(s.url("/openapi.json")).send().unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    let doc: Value = r.json().unwrap();
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3."),
        "{}",
        doc["openapi"]
    );
    assert_eq!(doc["info"]["title"], "kb");

    // Complete: the router's routes (from the source) are exactly the documented ones.
    let routes = source_routes();
    assert!(
        routes.len() >= 25,
        "the route scan found too little: {routes:?}"
    );
    let documented = documented_routes(&doc);
    let undocumented: Vec<_> = routes.difference(&documented).collect();
    assert!(
        undocumented.is_empty(),
        "routes without documentation: {undocumented:?}"
    );
    let phantom: Vec<_> = documented.difference(&routes).collect();
    assert!(
        phantom.is_empty(),
        "documented routes the router does not serve: {phantom:?}"
    );

    // The scan is what the live router serves: each scanned method is routed, and every other
    // method on the same path is 405.
    let client = Server::client();
    let paths: BTreeSet<&String> = routes.iter().map(|(_, p)| p).collect();
    for path in paths {
        let real = path
            .replace("{collection}", "probe")
            .replace("{id}", "probe-id")
            .replace("{model}", "kb/probe");
        for m in METHODS {
            let method = reqwest::Method::from_bytes(m.to_uppercase().as_bytes()).unwrap();
            let r = client.request(method, s.url(&real)).send().unwrap();
            let status = r.status().as_u16();
            let body: Value = r.json().unwrap_or(Value::Null);
            if routes.contains(&(m.to_string(), path.clone())) {
                assert!(
                    status != 405 && !(status == 404 && body["error"]["code"] == "not_found"),
                    "{m} {real}: scanned as a route, but the server says {status} {body}"
                );
            } else {
                assert_eq!(
                    status, 405,
                    "{m} {real}: not scanned, but the server serves it: {body}"
                );
            }
        }
    }

    // Schemas and the server-sent events.
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    for name in [
        "Source",
        "Done",
        "Meta",
        "TokenData",
        "AskStreamEvent",
        "JobStreamEvent",
        "JobRow",
        "ErrorBody",
        "OpenAiErrorBody",
        "ChatCompletion",
        "ChatCompletionChunk",
    ] {
        assert!(schemas.contains_key(name), "no schema {name}");
    }
    let ask_events: BTreeSet<String> = schemas["AskStreamEvent"]["oneOf"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            v["properties"]["event"]["enum"][0]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(
        ask_events,
        ["meta", "sources", "token", "done", "error"]
            .map(String::from)
            .into(),
    );
    let ask200 = &doc["paths"]["/v1/ask"]["post"]["responses"]["200"];
    assert!(
        ask200["content"]["text/event-stream"].is_object(),
        "{ask200}"
    );
    assert!(
        ask200["content"]["application/json"].is_object(),
        "{ask200}"
    );
    for ev in ["`meta`", "`sources`", "`token`", "`done`", "`error`"] {
        assert!(ask200["description"].as_str().unwrap().contains(ev), "{ev}");
    }
    assert!(
        doc["paths"]["/v1/jobs/{id}/events"]["get"]["responses"]["200"]["content"]
            ["text/event-stream"]
            .is_object()
    );
    assert!(
        doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
            .as_object()
            .unwrap()
            .keys()
            .any(|k| k.starts_with("text/plain"))
    );
    let ask = &doc["paths"]["/v1/ask"]["post"]["responses"];
    for st in [
        "400", "404", "409", "413", "415", "422", "429", "500", "502", "503", "504",
    ] {
        assert!(ask[st].is_object(), "/v1/ask: no {st}");
    }
    assert!(ask["429"]["headers"]["Retry-After"].is_object());
    let upload = &doc["paths"]["/v1/collections/{collection}/documents"]["post"];
    let form = &upload["requestBody"]["content"]["multipart/form-data"]["schema"];
    assert!(
        resolve(&doc, form)["properties"]["file"].is_object(),
        "{upload}"
    );
    for st in ["202", "400", "409", "413", "415", "422"] {
        assert!(upload["responses"][st].is_object(), "upload: no {st}");
    }

    // Real responses match the described ones.
    let text =
        "# Zephyr Deployment Guide\n\n## Ports\n\nThe zephyr daemon listens on port 7412 by \
                default. Change it with the `listen_port` option.\n";
    let (st, up) = s.upload("docs", &[("zephyr.md", text.as_bytes().to_vec())]);
    assert_eq!(st, 202, "{up}");
    let docs_path = "/v1/collections/{collection}/documents";
    assert_matches(&doc, "post", docs_path, 202, "application/json", &up);
    let job_id = up["documents"][0]["job_id"].as_str().unwrap().to_string();
    let doc_id = up["documents"][0]["document_id"]
        .as_str()
        .unwrap()
        .to_string();
    let job = s.wait_job(&job_id);
    assert_eq!(job["status"], "done", "{job}");
    assert_matches(&doc, "get", "/v1/jobs/{id}", 200, "application/json", &job);

    let (_, events) = get_text(&s, &format!("/v1/jobs/{job_id}/events"));
    let events = parse_sse(&events);
    assert!(!events.is_empty());
    for (event, data) in events {
        let ev = json!({"event": event, "data": data});
        assert_matches(
            &doc,
            "get",
            "/v1/jobs/{id}/events",
            200,
            "text/event-stream",
            &ev,
        );
    }

    for (path, real) in [
        ("/v1/collections", "/v1/collections".to_string()),
        (
            "/v1/collections/{collection}",
            "/v1/collections/docs".into(),
        ),
        (docs_path, "/v1/collections/docs/documents".into()),
        ("/v1/documents/{id}", format!("/v1/documents/{doc_id}")),
        ("/v1/info", "/v1/info".into()),
        ("/healthz", "/healthz".into()),
        ("/readyz", "/readyz".into()),
        ("/v1/models", "/v1/models".into()),
        ("/v1/models/{model}", "/v1/models/kb/docs".into()),
    ] {
        let (st, v) = s.get(&real);
        assert_eq!(st, 200, "{real}: {v}");
        assert_matches(&doc, "get", path, 200, "application/json", &v);
    }
    // The example the brief names: the fields of a collection, one by one.
    let (_, list) = s.get("/v1/collections");
    let described = &schemas["CollectionInfo"]["properties"];
    let real: BTreeSet<&String> = list["collections"][0].as_object().unwrap().keys().collect();
    let want: BTreeSet<&String> = described.as_object().unwrap().keys().collect();
    assert_eq!(real, want);

    let (st, v) = s.post_json(
        "/v1/search",
        &json!({"collection": "docs", "query": "zephyr port"}),
    );
    assert_eq!(st, 200, "{v}");
    assert_matches(&doc, "post", "/v1/search", 200, "application/json", &v);

    let ask_body = json!({"collection": "docs", "question": "Which port does the zephyr daemon listen on?", "conversation": true, "stream": false});
    let (st, v) = s.post_json("/v1/ask", &ask_body);
    assert_eq!(st, 200, "{v}");
    assert_matches(&doc, "post", "/v1/ask", 200, "application/json", &v);
    let conv = v["meta"]["conversation_id"].as_str().unwrap().to_string();
    let events = s.ask_sse(&json!({"collection": "docs", "question": "And how is it changed?", "conversation_id": conv}));
    let names: Vec<&str> = events.iter().map(|(e, _)| e.as_str()).collect();
    assert!(names.contains(&"done"), "{names:?}");
    for (event, data) in &events {
        let ev = json!({"event": event, "data": data});
        assert_matches(&doc, "post", "/v1/ask", 200, "text/event-stream", &ev);
    }
    let (st, v) = s.get("/v1/conversations");
    assert_eq!(st, 200);
    assert_matches(
        &doc,
        "get",
        "/v1/conversations",
        200,
        "application/json",
        &v,
    );
    let (st, v) = s.get(&format!("/v1/conversations/{conv}"));
    assert_eq!(st, 200);
    assert_eq!(v["turns"].as_array().unwrap().len(), 2, "{v}");
    assert_matches(
        &doc,
        "get",
        "/v1/conversations/{id}",
        200,
        "application/json",
        &v,
    );
    let (st, v) = s.get("/v1/usage");
    assert_eq!(st, 200);
    assert_matches(&doc, "get", "/v1/usage", 200, "application/json", &v);

    let chat = json!({"model": "kb/docs", "messages": [{"role": "user", "content": "Which port does zephyr use?"}]});
    let (st, v) = s.post_json("/v1/chat/completions", &chat);
    assert_eq!(st, 200, "{v}");
    assert_matches(
        &doc,
        "post",
        "/v1/chat/completions",
        200,
        "application/json",
        &v,
    );
    let mut streamed = chat.clone();
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": true});
    let r = client
        .post(s.url("/v1/chat/completions"))
        .json(&streamed)
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let chunks = parse_sse(&r.text().unwrap());
    assert!(chunks.len() >= 3, "{chunks:?}");
    for (_, data) in chunks.iter().filter(|(_, d)| d.is_object()) {
        assert_matches(
            &doc,
            "post",
            "/v1/chat/completions",
            200,
            "text/event-stream",
            data,
        );
    }

    // Errors.
    let (st, v) = s.get("/v1/collections/nope");
    assert_eq!(st, 404);
    assert_matches(
        &doc,
        "get",
        "/v1/collections/{collection}",
        404,
        "application/json",
        &v,
    );
    let (st, v) = s.get("/v1/models/gpt-4");
    assert_eq!(st, 404);
    assert_matches(
        &doc,
        "get",
        "/v1/models/{model}",
        404,
        "application/json",
        &v,
    );
    let (st, v) = s.post_json("/v1/ask", &json!({"question": "x", "top_k": 0}));
    assert_eq!(st, 422);
    assert_matches(&doc, "post", "/v1/ask", 422, "application/json", &v);

    let (st, metrics) = get_text(&s, "/metrics");
    assert_eq!(st, 200);
    assert!(metrics.contains("# TYPE"));
}

/// The response check above is strict: it catches a field the description lacks, a missing
/// required one and a wrong type, through references, `allOf` and `oneOf`.
#[test]
fn the_response_check_is_strict() {
    let doc = json!({"components": {"schemas": {
        "A": {"type": "object", "required": ["x"], "properties": {"x": {"type": "integer"}}},
        "B": {"allOf": [{"$ref": "#/components/schemas/A"},
            {"type": "object", "properties": {"y": {"oneOf": [{"type": "null"}, {"type": "string"}]}}}]},
    }}});
    let b = json!({"$ref": "#/components/schemas/B"});
    assert!(check(&doc, &b, &json!({"x": 1, "y": "s"}), "$").is_ok());
    assert!(check(&doc, &b, &json!({"x": 1, "y": null}), "$").is_ok());
    assert!(check(&doc, &b, &json!({"x": 1, "z": 2}), "$").is_err());
    assert!(check(&doc, &b, &json!({"y": "s"}), "$").is_err());
    assert!(check(&doc, &b, &json!({"x": "1"}), "$").is_err());
    assert!(check(&doc, &b, &json!({"x": 1, "y": 3}), "$").is_err());
}
