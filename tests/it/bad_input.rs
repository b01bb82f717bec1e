//! Bad input of every kind gets a clear JSON error with the right status, the server keeps
//! serving, and nothing already indexed changes. Hostile PDFs fail their document, never the
//! server.

use crate::common::*;
use serde_json::{json, Value};
use std::io::Write;

/// A one-page PDF with the given content stream (and optional /Filter), xref computed.
fn pdf_with_content(content: &[u8], filter: Option<&str>) -> Vec<u8> {
    let mut objs: Vec<Vec<u8>> = vec![
        b"<< /Type /Catalog /Pages 2 0 R >>".to_vec(),
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>".to_vec(),
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R /Resources << /Font << /F1 5 0 R >> >> >>".to_vec(),
    ];
    let mut stream = format!(
        "<< /Length {}{} >>\nstream\n",
        content.len(),
        filter.map(|f| format!(" /Filter /{f}")).unwrap_or_default()
    )
    .into_bytes();
    stream.extend_from_slice(content);
    stream.extend_from_slice(b"\nendstream");
    objs.push(stream);
    objs.push(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>".to_vec());
    let mut out = b"%PDF-1.4\n".to_vec();
    let mut offsets = Vec::new();
    for (i, o) in objs.iter().enumerate() {
        offsets.push(out.len());
        out.extend_from_slice(format!("{} 0 obj\n", i + 1).as_bytes());
        out.extend_from_slice(o);
        out.extend_from_slice(b"\nendobj\n");
    }
    let xref = out.len();
    out.extend_from_slice(format!("xref\n0 {}\n0000000000 65535 f \n", objs.len() + 1).as_bytes());
    for off in offsets {
        out.extend_from_slice(format!("{off:010} 00000 n \n").as_bytes());
    }
    out.extend_from_slice(
        format!(
            "trailer\n<< /Size {} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n",
            objs.len() + 1
        )
        .as_bytes(),
    );
    out
}

fn err_code(v: &Value) -> &str {
    v["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("not an error body: {v}"))
}

#[test]
fn bad_uploads_and_requests_are_rejected_cleanly() {
    let s = Server::start_with(&[
        ("KB_LIMITS__MAX_UPLOAD_BYTES", "200000"),
        ("KB_LIMITS__MAX_QUESTION_CHARS", "500"),
    ]);
    // Something good is indexed first; it must be untouched by everything below.
    let (st, up) = s.upload(
        "c",
        &[(
            "good.md",
            b"# Good\n\nThe orchard keeps 31 pear trees.\n".to_vec(),
        )],
    );
    assert_eq!(st, 202, "{up}");
    let good_job = s.wait_job(up["documents"][0]["job_id"].as_str().unwrap());
    assert_eq!(good_job["status"], "done");
    let (_, before) = s.get("/v1/collections/c");

    // (name, bytes, status, accepted codes separated by '|')
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        ("empty.txt", vec![], 400, "empty_file"),
        ("big.txt", vec![b'a'; 300_000], 413, "file_too_large"),
        (
            "image.png",
            b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR....".to_vec(),
            415,
            "unsupported_media_type",
        ),
        (
            "latin1.txt",
            b"caf\xe9 cr\xe8me br\xfbl\xe9e".to_vec(),
            422,
            "invalid_utf8",
        ),
        ("../escape.txt", b"hello".to_vec(), 400, "invalid_filename"),
        ("dir/name.txt", b"hello".to_vec(), 400, "invalid_filename"),
        // A control character may already break the multipart header itself.
        (
            "bell\u{7}.txt",
            b"hello".to_vec(),
            400,
            "invalid_filename|malformed_multipart",
        ),
        (
            "truncated.pdf",
            {
                let p = fixture("bashref-3pages.pdf");
                p[..150_000].to_vec()
            },
            422,
            "corrupt_pdf",
        ),
    ];
    for (name, bytes, status, code) in cases {
        let (st, v) = s.upload("c", &[(name, bytes)]);
        assert_eq!(st, status, "{name}: {v}");
        assert!(code.split('|').any(|c| c == err_code(&v)), "{name}: {v}");
        assert!(v["error"]["message"].as_str().unwrap().len() > 5);
    }

    // One bad file in a request: nothing from that request is registered.
    let (st, _) = s.upload(
        "c",
        &[
            ("fine.txt", b"fine words here".to_vec()),
            ("empty.txt", vec![]),
        ],
    );
    assert_eq!(st, 400);
    let (_, list) = s.get("/v1/collections/c/documents");
    assert_eq!(list["documents"].as_array().unwrap().len(), 1, "{list}");

    // Not multipart, no file part.
    let r = Server::client()
        .post(s.url("/v1/collections/c/documents"))
        .body("just text")
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 415);
    let form = reqwest::blocking::multipart::Form::new().text("other", "x");
    let r = Server::client()
        .post(s.url("/v1/collections/c/documents"))
        .multipart(form)
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert_eq!(err_code(&r.json().unwrap()), "no_files");

    // Unknown things.
    for path in [
        "/v1/collections/nope/documents",
        "/v1/documents/nope",
        "/v1/jobs/nope",
        "/v1/collections/nope",
        "/v1/no-such-route",
    ] {
        let (st, v) = s.get(path);
        assert_eq!(st, 404, "{path}: {v}");
        err_code(&v);
    }
    let (st, v) = s.get("/v1/collections/bad%20name!/documents");
    assert_eq!((st, err_code(&v)), (400, "invalid_collection"));
    let (st, v) = s.post_json(
        "/v1/ask",
        &json!({"collection": "nope", "question": "hello?"}),
    );
    assert_eq!((st, err_code(&v)), (404, "collection_not_found"));

    // Questions.
    let (st, v) = s.post_json("/v1/ask", &json!({"collection": "c", "question": "   "}));
    assert_eq!((st, err_code(&v)), (400, "empty_question"));
    let (st, v) = s.post_json(
        "/v1/ask",
        &json!({"collection": "c", "question": "why ".repeat(200)}),
    );
    assert_eq!((st, err_code(&v)), (413, "question_too_long"));
    let (st, v) = s.post_json(
        "/v1/search",
        &json!({"collection": "c", "query": "pears", "top_k": 0}),
    );
    assert_eq!((st, err_code(&v)), (422, "invalid_top_k"));
    let (st, v) = s.post_json(
        "/v1/search",
        &json!({"collection": "c", "query": "pears", "mode": "psychic"}),
    );
    assert_eq!((st, err_code(&v)), (422, "invalid_mode"));
    let (st, v) = s.post_json("/v1/ask", &json!({"collection": "c", "questoin": "typo"}));
    assert_eq!((st, err_code(&v)), (422, "invalid_request"));
    let r = Server::client()
        .post(s.url("/v1/ask"))
        .header("content-type", "application/json")
        .body("{\"question\": ")
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert_eq!(err_code(&r.json().unwrap()), "malformed_json");
    let r = Server::client()
        .post(s.url("/v1/ask"))
        .body("question=hi")
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 415);

    // Still serving, and nothing indexed changed.
    assert_eq!(s.get("/healthz").0, 200);
    let (_, after) = s.get("/v1/collections/c");
    assert_eq!(before["points"], after["points"]);
    assert_eq!(before["documents"], after["documents"]);
    let hits = s.search("c", "how many pear trees in the orchard", 1);
    assert!(hits[0]["text"].as_str().unwrap().contains("31 pear trees"));
}

#[test]
fn hostile_documents_fail_their_document_not_the_server() {
    // Small limits for the extractor make the bombs trip them quickly.
    let s = Server::start_with(&[
        ("KB_LIMITS__EXTRACT_MEMORY_MB", "256"),
        ("KB_LIMITS__EXTRACT_TIMEOUT_SECS", "3"),
    ]);

    // Sanity: the hand-built PDF format is right (a text page extracts).
    let ok = pdf_with_content(
        b"BT /F1 12 Tf 72 720 Td (The heron nests by the weir.) Tj ET",
        None,
    );
    let (st, up) = s.upload("h", &[("ok.pdf", ok)]);
    assert_eq!(st, 202, "{up}");
    let job = s.wait_job(up["documents"][0]["job_id"].as_str().unwrap());
    assert_eq!(job["status"], "done", "{job}");

    // A page with only graphics: a scan with no text layer.
    let scan = pdf_with_content(b"0.5 g 0 0 612 792 re f", None);
    // Garbage between a PDF header and an EOF marker.
    let mut corrupt = b"%PDF-1.7\n".to_vec();
    corrupt.extend((0..20_000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8));
    corrupt.extend_from_slice(b"\n%%EOF\n");
    // A content stream that inflates to 1 GiB from about 1 MB.
    let bomb = {
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
        let block = vec![b' '; 1 << 20];
        for _ in 0..1024 {
            z.write_all(&block).unwrap();
        }
        pdf_with_content(&z.finish().unwrap(), Some("FlateDecode"))
    };
    assert!(bomb.len() < 4 << 20);

    // HTML nested so deep that the parser crawls (minutes): stopped at the deadline.
    let nested = format!(
        "<html><body>{}deep{}</body></html>",
        "<div>".repeat(200_000),
        "</div>".repeat(200_000)
    );
    for (name, bytes, expect) in [
        // Whichever trips first: the wall-clock deadline, or the CPU-time (3 s) or memory limit.
        (
            "nested.html",
            nested.into_bytes(),
            "took longer than|resource limits",
        ),
        ("scan.pdf", scan, "no text layer"),
        ("corrupt.pdf", corrupt, "could not be read"),
        ("bomb.pdf", bomb, "resource limits"),
    ] {
        let (st, up) = s.upload("h", &[(name, bytes)]);
        assert_eq!(st, 202, "{name}: {up}");
        let job = s.wait_job(up["documents"][0]["job_id"].as_str().unwrap());
        assert_eq!(job["status"], "failed", "{name}: {job}");
        let err = job["error"].as_str().unwrap();
        assert!(expect.split('|').any(|e| err.contains(e)), "{name}: {err}");
        let (_, d) = s.get(&format!(
            "/v1/documents/{}",
            up["documents"][0]["document_id"].as_str().unwrap()
        ));
        assert_eq!(d["status"], "failed");
        assert_eq!(d["error"].as_str().unwrap(), err);
        assert_eq!(s.get("/healthz").0, 200, "server survived {name}");
    }
    // The good document is still there and answers.
    let hits = s.search("h", "where does the heron nest", 1);
    assert!(hits[0]["text"].as_str().unwrap().contains("heron"));
    let (_, c) = s.get("/v1/collections/h");
    assert_eq!(c["points"], c["chunks"]);
}

#[test]
fn a_collection_refuses_another_embedder() {
    let mut s = Server::start();
    let (st, up) = s.upload(
        "m",
        &[("a.md", b"# A\n\nThe kiln fires at 1280 degrees.\n".to_vec())],
    );
    assert_eq!(st, 202);
    s.wait_job(up["documents"][0]["job_id"].as_str().unwrap());
    // Same data, another embedding model (never called: the mismatch is caught first).
    s.restart_with(&[
        ("KB_EMBEDDING__PROVIDER", "openai"),
        ("KB_EMBEDDING__MODEL", "other-embedder"),
        ("KB_EMBEDDING__DIM", "8"),
        ("KB_EMBEDDING__BASE_URL", "http://127.0.0.1:9/v1"),
    ]);
    let (st, v) = s.post_json(
        "/v1/search",
        &json!({"collection": "m", "query": "kiln temperature"}),
    );
    assert_eq!((st, err_code(&v)), (409, "embedder_mismatch"), "{v}");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("local:all-MiniLM-L6-v2"));
    let (st, v) = s.upload("m", &[("b.md", b"more text".to_vec())]);
    assert_eq!((st, err_code(&v)), (409, "embedder_mismatch"), "{v}");
    // Back to the right model: everything is as it was.
    s.restart_with(&[]);
    let hits = s.search("m", "kiln temperature", 1);
    assert!(hits[0]["text"].as_str().unwrap().contains("1280"));
}
