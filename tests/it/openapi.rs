//! `GET /openapi.json` against a real server: an OpenAPI 3.x document that describes every
//! route the router serves (found in the source and confirmed on the live router), and whose
//! described responses and server-sent events match real ones (validated as JSON Schema 2020-12
//! by the `jsonschema` crate, with every object description closed: see `closed`).

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
            let name = r.strip_prefix(COMPONENT).unwrap();
            let s = &doc["components"]["schemas"][name];
            assert!(!s.is_null(), "no schema {name}");
            resolve(doc, s)
        }
        None => schema,
    }
}

const COMPONENT: &str = "#/components/schemas/";
/// Where `json_schema` puts the document's schemas, closed and open (see `closed`).
const CLOSED: &str = "#/$defs/closed/$defs/";
const OPEN: &str = "#/$defs/open/$defs/";

/// `schema` (part of the OpenAPI document) with every object description closed: kb's
/// responses have exactly the fields their description names, and JSON Schema allows any
/// other field unless told. An object schema that lists `properties` (or is an `allOf`) gets
/// `unevaluatedProperties: false` unless it says `additionalProperties` or
/// `unevaluatedProperties` itself. A `part` (a member of an `allOf`, a flattened struct, or an
/// alternative under such a schema) stays open: the whole closes over the fields of all its
/// parts. References to `#/components/schemas/X` become references to the closed or the open
/// copy of `X` in the document `json_schema` builds.
fn closed(schema: &Value, part: bool) -> Value {
    let Some(m) = schema.as_object() else {
        return schema.clone();
    };
    let has_props = m.contains_key("properties") || m.contains_key("allOf");
    let mut out = serde_json::Map::new();
    for (k, v) in m {
        let v = match (k.as_str(), v) {
            ("$ref", Value::String(r)) => {
                let name = r
                    .strip_prefix(COMPONENT)
                    .unwrap_or_else(|| panic!("a reference outside the components: {r}"));
                json!(format!("{}{name}", if part { OPEN } else { CLOSED }))
            }
            ("properties" | "patternProperties" | "dependentSchemas", Value::Object(ps)) => {
                Value::Object(
                    ps.iter()
                        .map(|(n, s)| (n.clone(), closed(s, false)))
                        .collect(),
                )
            }
            ("allOf", Value::Array(a)) => a.iter().map(|s| closed(s, true)).collect(),
            ("oneOf" | "anyOf", Value::Array(a)) => {
                a.iter().map(|s| closed(s, part || has_props)).collect()
            }
            ("prefixItems", Value::Array(a)) => a.iter().map(|s| closed(s, false)).collect(),
            (
                "items"
                | "additionalProperties"
                | "unevaluatedProperties"
                | "unevaluatedItems"
                | "contains"
                | "propertyNames"
                | "not"
                | "if"
                | "then"
                | "else",
                s,
            ) => closed(s, false),
            _ => v.clone(),
        };
        out.insert(k.clone(), v);
    }
    // OpenAPI's `int32` (JSON Schema has no numeric formats, so the validator ignores it): a
    // signed 32-bit integer, as bounds.
    if m.get("format").and_then(Value::as_str) == Some("int32") {
        let bound = |k: &str, limit: i32, pick: fn(f64, f64) -> f64| {
            let limit = f64::from(limit);
            json!(m
                .get(k)
                .and_then(Value::as_f64)
                .map_or(limit, |v| pick(v, limit)))
        };
        out.insert("minimum".into(), bound("minimum", i32::MIN, f64::max));
        out.insert("maximum".into(), bound("maximum", i32::MAX, f64::min));
    }
    if has_props
        && !part
        && !m.contains_key("additionalProperties")
        && !m.contains_key("unevaluatedProperties")
    {
        out.insert("unevaluatedProperties".into(), Value::Bool(false));
    }
    Value::Object(out)
}

/// A JSON Schema 2020-12 document (OpenAPI 3.1's schemas are in that dialect) for `schema`,
/// with the OpenAPI document's components beside it so that its references resolve.
fn json_schema(doc: &Value, schema: &Value) -> Value {
    let empty = serde_json::Map::new();
    let components = doc["components"]["schemas"].as_object().unwrap_or(&empty);
    let copies = |part: bool| -> serde_json::Map<String, Value> {
        components
            .iter()
            .map(|(name, s)| (name.clone(), closed(s, part)))
            .collect()
    };
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$defs": {
            "closed": {"$defs": copies(false)},
            "open": {"$defs": copies(true)},
            "response": closed(schema, false),
        },
        "$ref": "#/$defs/response",
    })
}

/// Whether `v` matches `schema` (a part of the OpenAPI document `doc`), validated by the
/// `jsonschema` crate: types, `oneOf` (exactly one), `anyOf`, `allOf`, enums, bounds, formats
/// (JSON Schema's `date-time`, `uuid`, ...; OpenAPI's `int32`, see `closed`),
/// `additionalProperties`, and (see `closed`) no undescribed field.
/// On a mismatch, every error as `instance pointer: message (schema pointer)`.
fn check(doc: &Value, schema: &Value, v: &Value) -> Result<(), Vec<String>> {
    let validator = jsonschema::draft202012::options()
        .should_validate_formats(true)
        .build(&json_schema(doc, schema))
        .unwrap_or_else(|e| panic!("not a valid JSON Schema: {e}\n{schema:#}"));
    let errors: Vec<String> = validator
        .iter_errors(v)
        .map(|e| {
            let at = e.instance_path().to_string();
            let at = if at.is_empty() { "/".to_string() } else { at };
            format!("{at}: {e} (schema {})", e.schema_path())
        })
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
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

/// Real responses checked against their description. Mismatches are collected, so that one run
/// reports all of them; `finish` fails the test if there was any.
struct Responses<'a> {
    doc: &'a Value,
    mismatches: Vec<String>,
}

impl<'a> Responses<'a> {
    fn new(doc: &'a Value) -> Self {
        Responses {
            doc,
            mismatches: Vec::new(),
        }
    }

    fn check(&mut self, method: &str, path: &str, status: u16, ctype: &str, v: &Value) {
        let schema = response_schema(self.doc, method, path, status, ctype);
        if let Err(errors) = check(self.doc, schema, v) {
            self.mismatches.push(format!(
                "{} {path} {status} {ctype}:\n    {}\n    response: {v}",
                method.to_uppercase(),
                errors.join("\n    ")
            ));
        }
    }

    fn finish(self) {
        assert!(
            self.mismatches.is_empty(),
            "real responses that do not match their description:\n{}",
            self.mismatches.join("\n")
        );
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
    let mut responses = Responses::new(&doc);
    let text =
        "# Zephyr Deployment Guide\n\n## Ports\n\nThe zephyr daemon listens on port 7412 by \
                default. Change it with the `listen_port` option.\n";
    let (st, up) = s.upload("docs", &[("zephyr.md", text.as_bytes().to_vec())]);
    assert_eq!(st, 202, "{up}");
    let docs_path = "/v1/collections/{collection}/documents";
    responses.check("post", docs_path, 202, "application/json", &up);
    let job_id = up["documents"][0]["job_id"].as_str().unwrap().to_string();
    let doc_id = up["documents"][0]["document_id"]
        .as_str()
        .unwrap()
        .to_string();
    let job = s.wait_job(&job_id);
    assert_eq!(job["status"], "done", "{job}");
    responses.check("get", "/v1/jobs/{id}", 200, "application/json", &job);

    let (_, events) = get_text(&s, &format!("/v1/jobs/{job_id}/events"));
    let events = parse_sse(&events);
    assert!(!events.is_empty());
    for (event, data) in events {
        let ev = json!({"event": event, "data": data});
        responses.check("get", "/v1/jobs/{id}/events", 200, "text/event-stream", &ev);
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
        responses.check("get", path, 200, "application/json", &v);
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
    responses.check("post", "/v1/search", 200, "application/json", &v);

    let ask_body = json!({"collection": "docs", "question": "Which port does the zephyr daemon listen on?", "conversation": true, "stream": false});
    let (st, v) = s.post_json("/v1/ask", &ask_body);
    assert_eq!(st, 200, "{v}");
    responses.check("post", "/v1/ask", 200, "application/json", &v);
    let conv = v["meta"]["conversation_id"].as_str().unwrap().to_string();
    let events = s.ask_sse(&json!({"collection": "docs", "question": "And how is it changed?", "conversation_id": conv}));
    let names: Vec<&str> = events.iter().map(|(e, _)| e.as_str()).collect();
    assert!(names.contains(&"done"), "{names:?}");
    for (event, data) in &events {
        let ev = json!({"event": event, "data": data});
        responses.check("post", "/v1/ask", 200, "text/event-stream", &ev);
    }
    let (st, v) = s.get("/v1/conversations");
    assert_eq!(st, 200);
    responses.check("get", "/v1/conversations", 200, "application/json", &v);
    let (st, v) = s.get(&format!("/v1/conversations/{conv}"));
    assert_eq!(st, 200);
    assert_eq!(v["turns"].as_array().unwrap().len(), 2, "{v}");
    responses.check("get", "/v1/conversations/{id}", 200, "application/json", &v);
    let (st, v) = s.get("/v1/usage");
    assert_eq!(st, 200);
    responses.check("get", "/v1/usage", 200, "application/json", &v);

    let chat = json!({"model": "kb/docs", "messages": [{"role": "user", "content": "Which port does zephyr use?"}]});
    let (st, v) = s.post_json("/v1/chat/completions", &chat);
    assert_eq!(st, 200, "{v}");
    responses.check("post", "/v1/chat/completions", 200, "application/json", &v);
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
        responses.check(
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
    responses.check(
        "get",
        "/v1/collections/{collection}",
        404,
        "application/json",
        &v,
    );
    let (st, v) = s.get("/v1/models/gpt-4");
    assert_eq!(st, 404);
    responses.check("get", "/v1/models/{model}", 404, "application/json", &v);
    let (st, v) = s.post_json("/v1/ask", &json!({"question": "x", "top_k": 0}));
    assert_eq!(st, 422);
    responses.check("post", "/v1/ask", 422, "application/json", &v);

    let (st, metrics) = get_text(&s, "/metrics");
    assert_eq!(st, 200);
    assert!(metrics.contains("# TYPE"));

    responses.finish();
}

/// The response check above is strict: it catches a field the description lacks, a missing
/// required one, a wrong type, a value out of bounds or of the wrong format, a value two `oneOf`
/// alternatives match, through references, `allOf`, `oneOf` and `additionalProperties`.
#[test]
fn the_response_check_is_strict() {
    let doc = json!({"components": {"schemas": {
        "A": {"type": "object", "required": ["x"], "properties": {"x": {"type": "integer"}}},
        "B": {"allOf": [{"$ref": "#/components/schemas/A"},
            {"type": "object", "properties": {"y": {"oneOf": [{"type": "null"}, {"type": "string"}]}}}]},
        "C": {"type": "object", "properties": {
            "n": {"type": "integer", "minimum": 0},
            "i": {"type": "integer", "format": "int32", "minimum": 0},
            "t": {"type": "string", "format": "date-time"},
            "one": {"oneOf": [{"type": "integer"}, {"type": "number"}]},
            "map": {"type": "object", "additionalProperties": {"type": "integer"}},
            "b": {"oneOf": [{"type": "null"}, {"$ref": "#/components/schemas/B"}]},
        }},
    }}});
    let b = json!({"$ref": "#/components/schemas/B"});
    assert!(check(&doc, &b, &json!({"x": 1, "y": "s"})).is_ok());
    assert!(check(&doc, &b, &json!({"x": 1, "y": null})).is_ok());
    assert!(check(&doc, &b, &json!({"x": 1, "z": 2})).is_err());
    assert!(check(&doc, &b, &json!({"y": "s"})).is_err());
    assert!(check(&doc, &b, &json!({"x": "1"})).is_err());
    assert!(check(&doc, &b, &json!({"x": 1, "y": 3})).is_err());
    // `A` alone is closed too, and so is `B` under a property.
    let a = json!({"$ref": "#/components/schemas/A"});
    assert!(check(&doc, &a, &json!({"x": 1})).is_ok());
    assert!(check(&doc, &a, &json!({"x": 1, "y": "s"})).is_err());
    let c = json!({"$ref": "#/components/schemas/C"});
    assert!(check(&doc, &c, &json!({"b": {"x": 1, "y": "s"}})).is_ok());
    assert!(check(&doc, &c, &json!({"b": {"x": 1, "z": 2}})).is_err());
    assert!(check(&doc, &c, &json!({"b": null, "nope": 1})).is_err());
    // Bounds, formats, `oneOf` as exactly one, `additionalProperties`.
    assert!(check(&doc, &c, &json!({"n": 0, "t": "2024-05-01T12:00:00Z"})).is_ok());
    assert!(check(&doc, &c, &json!({"n": -1})).is_err());
    assert!(check(&doc, &c, &json!({"t": "yesterday"})).is_err());
    assert!(check(&doc, &c, &json!({"i": 2147483647})).is_ok());
    assert!(check(&doc, &c, &json!({"i": 2147483648u64})).is_err());
    assert!(check(&doc, &c, &json!({"i": -1})).is_err());
    assert!(check(&doc, &c, &json!({"one": 1.5})).is_ok());
    assert!(
        check(&doc, &c, &json!({"one": 1})).is_err(),
        "both alternatives match"
    );
    assert!(check(&doc, &c, &json!({"map": {"a": 1, "b": 2}})).is_ok());
    assert!(check(&doc, &c, &json!({"map": {"a": "1"}})).is_err());
    // The errors say where.
    let errors = check(&doc, &c, &json!({"n": -1, "b": {"x": "1"}})).unwrap_err();
    assert!(errors.iter().any(|e| e.starts_with("/n: ")), "{errors:?}");
    assert!(errors.iter().any(|e| e.starts_with("/b")), "{errors:?}");
}
