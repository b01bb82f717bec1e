//! PDF text extraction, page by page, and the isolation of all extraction in a child process.
//!
//! `pdf-extract` panics on many corrupt files, can inflate a small file into gigabytes and can
//! spin for minutes on pathological content streams; an allocation failure aborts the whole
//! process, which `catch_unwind` cannot stop. HTML parsing slows to a crawl on deeply nested
//! input. So kb never parses an upload in its own process: [`extract_isolated`] starts a child
//! (kb's own binary with a hidden subcommand that calls [`child_main`]) under an address-space
//! limit, a CPU-time limit and a wall-clock deadline, and reads the document back over a pipe.

use crate::{ExtractError, ExtractedDoc, Limits};
use std::io::{Read, Write};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const RESULT_MARKER: &[u8] = b"\n--KB-EXTRACT-RESULT--\n";

/// Set in the extraction child: its progress (a byte on stderr per PDF page) is watched.
static HEARTBEAT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// A page done (in the child; nothing elsewhere).
fn beat() {
    if HEARTBEAT.load(std::sync::atomic::Ordering::Relaxed) {
        let _ = std::io::stderr().write_all(b".");
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
enum ChildResult {
    Doc(ExtractedDoc),
    Failed(ExtractError),
}

/// Extract the text of every page, in this process. A page that fails or panics yields an
/// empty page instead of ending the document (pdf-extract's own by-pages function stops
/// silently at the first bad page).
pub fn extract_pages(bytes: &[u8], max_pages: usize) -> Result<Vec<String>, ExtractError> {
    let loaded = catch_unwind(AssertUnwindSafe(|| pdf_extract::Document::load_mem(bytes)));
    let mut doc = match loaded {
        Ok(Ok(doc)) => doc,
        Ok(Err(e)) => return Err(ExtractError::Pdf(short(&e.to_string()))),
        Err(_) => {
            return Err(ExtractError::Pdf(
                "the parser could not read its structure".into(),
            ))
        }
    };
    if doc.is_encrypted() && doc.decrypt("").is_err() {
        return Err(ExtractError::Pdf(
            "the PDF is encrypted with a password".into(),
        ));
    }
    let pages: Vec<u32> = doc.get_pages().keys().copied().collect();
    if pages.len() > max_pages {
        return Err(ExtractError::TooManyPages {
            pages: pages.len(),
            limit: max_pages,
        });
    }
    if pages.is_empty() {
        return Err(ExtractError::Pdf("the PDF has no pages".into()));
    }
    let mut out = Vec::with_capacity(pages.len());
    beat();
    for n in pages {
        let text = catch_unwind(AssertUnwindSafe(|| {
            let mut s = String::new();
            let r = {
                let mut dev = pdf_extract::PlainTextOutput::new(&mut s);
                pdf_extract::output_doc_page(&doc, &mut dev, n)
            };
            r.map(|_| s)
        }));
        out.push(match text {
            Ok(Ok(s)) => s,
            _ => String::new(),
        });
        beat();
    }
    Ok(out)
}

fn short(s: &str) -> String {
    let s = s.trim();
    if s.len() > 200 {
        let mut end = 200;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}...", &s[..end])
    } else {
        s.to_string()
    }
}

/// Entry point of the extraction child: the document's bytes on stdin, the extracted document
/// on stdout. `name` only breaks the Markdown/plain-text tie. Returns the process exit code.
pub fn child_main(name: &str, max_pages: usize) -> i32 {
    // Panics are caught per page; keep their messages off stderr.
    std::panic::set_hook(Box::new(|_| {}));
    HEARTBEAT.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut bytes = Vec::new();
    if std::io::stdin().read_to_end(&mut bytes).is_err() {
        return 2;
    }
    let limits = Limits {
        max_pages,
        max_bytes: usize::MAX,
        ..Limits::default()
    };
    let result = match crate::extract(&bytes, name, None, &limits) {
        Ok(doc) => ChildResult::Doc(doc),
        Err(e) => ChildResult::Failed(e),
    };
    let mut out = std::io::stdout().lock();
    let body = serde_json::to_vec(&result).expect("serialise pages");
    if out.write_all(RESULT_MARKER).is_err() || out.write_all(&body).is_err() {
        return 2;
    }
    let _ = out.flush();
    0
}

/// Run extraction in a child process: `program args...` must call [`child_main`].
pub fn extract_isolated(
    program: &Path,
    args: &[String],
    bytes: &[u8],
    limits: &Limits,
) -> Result<ExtractedDoc, ExtractError> {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mem = limits.max_memory_bytes;
    let cpu = limits.max_time.as_secs().max(1);
    #[cfg(unix)]
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(move || {
            // Only async-signal-safe calls here: setrlimit is one.
            let as_lim = libc::rlimit {
                rlim_cur: mem as libc::rlim_t,
                rlim_max: mem as libc::rlim_t,
            };
            if libc::setrlimit(libc::RLIMIT_AS, &as_lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let cpu_lim = libc::rlimit {
                rlim_cur: cpu as libc::rlim_t,
                rlim_max: (cpu + 5) as libc::rlim_t,
            };
            if libc::setrlimit(libc::RLIMIT_CPU, &cpu_lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // No core dumps of hostile input.
            let core = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            libc::setrlimit(libc::RLIMIT_CORE, &core);
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| ExtractError::Extractor(format!("could not start the extractor: {e}")))?;

    let mut stdin = child.stdin.take().expect("piped stdin");
    let input = bytes.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let mut stdout = child.stdout.take().expect("piped stdout");
    let cap = (limits.max_text_bytes as u64) * 2 + 1024 * 1024;
    let reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let r = (&mut stdout).take(cap).read_to_end(&mut buf);
        (r, buf)
    });

    // Progress: any byte on the child's stderr. Watched once the first one has come (only PDFs
    // report progress; other types have `max_time` alone).
    let last_beat: std::sync::Arc<std::sync::Mutex<Option<Instant>>> = Default::default();
    let mut stderr = child.stderr.take().expect("piped stderr");
    let beats = last_beat.clone();
    let watcher = std::thread::spawn(move || {
        let mut buf = [0u8; 256];
        while let Ok(n) = stderr.read(&mut buf) {
            if n == 0 {
                break;
            }
            *beats.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        }
    });
    let stalled = || {
        last_beat
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|t| t.elapsed() >= limits.max_stall)
    };

    let deadline = Instant::now() + limits.max_time;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline || stalled() => {
                let err = if Instant::now() >= deadline {
                    ExtractError::Timeout(limits.max_time)
                } else {
                    ExtractError::Stalled(limits.max_stall)
                };
                let _ = child.kill();
                let _ = child.wait();
                let _ = writer.join();
                let _ = reader.join();
                // The watcher ends when the pipe closes; not waited for.
                drop(watcher);
                return Err(err);
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => {
                return Err(ExtractError::Extractor(format!(
                    "extractor wait failed: {e}"
                )))
            }
        }
    };
    let _ = writer.join();
    let _ = watcher.join();
    let (_, buf) = reader.join().unwrap_or((Ok(0), Vec::new()));

    if !status.success() {
        #[cfg(unix)]
        {
            use std::os::unix::process::ExitStatusExt;
            if let Some(sig) = status.signal() {
                return Err(match sig {
                    libc::SIGXCPU | libc::SIGKILL => {
                        ExtractError::ResourceLimit(format!("CPU time over {cpu} s"))
                    }
                    libc::SIGABRT | libc::SIGSEGV | libc::SIGBUS => ExtractError::ResourceLimit(
                        format!("memory over {} MiB", mem / (1024 * 1024)),
                    ),
                    s => ExtractError::Extractor(format!("the extractor died with signal {s}")),
                });
            }
        }
        return Err(ExtractError::Extractor(format!(
            "the extractor failed ({status})"
        )));
    }
    let pos = buf
        .windows(RESULT_MARKER.len())
        .rposition(|w| w == RESULT_MARKER)
        .ok_or_else(|| ExtractError::Extractor("the extractor returned no result".into()))?;
    let result: ChildResult = serde_json::from_slice(&buf[pos + RESULT_MARKER.len()..])
        .map_err(|_| ExtractError::Extractor("the extractor returned a malformed result".into()))?;
    match result {
        ChildResult::Doc(d) => Ok(d),
        ChildResult::Failed(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncated_pdf_is_an_error_not_a_panic() {
        let err = extract_pages(b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog", 10).unwrap_err();
        assert!(matches!(err, ExtractError::Pdf(_)), "{err:?}");
    }

    #[test]
    fn isolated_child_failure_is_reported() {
        // `false` exits 1 without output: the parent must report a failure, not hang or panic.
        let err = extract_isolated(
            Path::new("/bin/false"),
            &[],
            b"%PDF-1.4",
            &Limits::default(),
        )
        .unwrap_err();
        assert!(matches!(err, ExtractError::Extractor(_)), "{err:?}");
    }

    #[test]
    fn isolated_child_is_killed_at_the_deadline() {
        let limits = Limits {
            max_time: Duration::from_millis(300),
            ..Limits::default()
        };
        let t = Instant::now();
        let err = extract_isolated(Path::new("/bin/sleep"), &["30".to_string()], b"", &limits)
            .unwrap_err();
        assert!(matches!(err, ExtractError::Timeout(_)), "{err:?}");
        assert!(t.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn a_child_that_stops_reporting_progress_is_stopped_early() {
        let limits = Limits {
            max_time: Duration::from_secs(20),
            max_stall: Duration::from_millis(300),
            ..Limits::default()
        };
        let sh = |script: &str| vec!["-c".to_string(), script.to_string()];
        // One page done, then nothing: stopped after the stall, long before max_time.
        let t = Instant::now();
        let err = extract_isolated(
            Path::new("/bin/sh"),
            &sh("printf . >&2; exec sleep 30"),
            b"",
            &limits,
        )
        .unwrap_err();
        assert!(matches!(err, ExtractError::Stalled(_)), "{err:?}");
        assert!(t.elapsed() < Duration::from_secs(10));
        // Steady progress is never stalled: only max_time stops it.
        let limits = Limits {
            max_time: Duration::from_millis(1500),
            ..limits
        };
        let err = extract_isolated(
            Path::new("/bin/sh"),
            &sh("while :; do printf . >&2; sleep 0.05; done"),
            b"",
            &limits,
        )
        .unwrap_err();
        assert!(matches!(err, ExtractError::Timeout(_)), "{err:?}");
        // No progress reported at all (not a PDF): max_time alone.
        let err = extract_isolated(Path::new("/bin/sleep"), &["30".to_string()], b"", &limits)
            .unwrap_err();
        assert!(matches!(err, ExtractError::Timeout(_)), "{err:?}");
    }
}
