//! A nearly full data disk, made real: a small tmpfs (needs root, as CI runs; skipped with a
//! note otherwise) filled with a ballast file.

use crate::common::*;
use serde_json::json;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size_mib: u64) -> Option<Tmpfs> {
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIPPED: mounting a tmpfs needs root");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mib}m"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("run mount");
        assert!(st.success(), "root, but cannot mount a tmpfs");
        Some(Tmpfs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Fill the disk of `dir` until `leave` bytes are free (a ballast file, removed to make room).
fn fill_to(dir: &Path, leave: u64) -> PathBuf {
    let ballast = dir.join("ballast");
    let free = kb::disk::free_bytes(dir).unwrap();
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&ballast)
        .unwrap();
    let block = vec![0xA5u8; 1 << 20];
    let mut left = free.saturating_sub(leave);
    while left > 0 {
        let n = left.min(block.len() as u64) as usize;
        f.write_all(&block[..n]).unwrap();
        left -= n as u64;
    }
    f.sync_all().unwrap();
    ballast
}

fn big_doc(lines: usize) -> Vec<u8> {
    let mut s = String::from("# Manifest\n\n");
    for i in 0..lines {
        s.push_str(&format!(
            "Crate {i} of the manifest holds {} lanterns, {} coils of rope and a ledger signed by clerk {}.\n\n",
            i % 23,
            i * 7 % 41,
            i % 9
        ));
    }
    s.into_bytes()
}

/// Below the free-space reserve kb is read-only: writes get 507, searches and
/// answers go on, a running job pauses (back to `queued`, saying why) instead of hanging or
/// failing, kb restarts on the nearly full disk, and everything resumes once there is room.
/// Below the floor needed to open the index it refuses to start with a message (not SIGBUS).
#[test]
fn a_nearly_full_disk_makes_kb_read_only_not_broken() {
    let Some(fs) = Tmpfs::mount(200) else { return };
    let data = fs.path().join("data");
    let env = [
        ("KB_LIMITS__MIN_FREE_DISK_MB", "64"),
        ("KB_LIMITS__DISK_CHECK_SECS", "1"),
    ];
    let mut s = Server::start_at(data.clone(), &env);
    let (st, up) = s.upload(
        "disk",
        &[(
            "tides.md",
            b"# Tides\n\nThe spring tide reaches seven metres.\n".to_vec(),
        )],
    );
    assert_eq!(st, 202, "{up}");
    let doc = up["documents"][0]["document_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        s.wait_job(up["documents"][0]["job_id"].as_str().unwrap())["status"],
        "done"
    );

    // Nearly full: 40 MiB left against a reserve of 64.
    let ballast = fill_to(fs.path(), 40 << 20);
    let refused = |s: &Server| {
        let form = reqwest::blocking::multipart::Form::new().part(
            "file",
            reqwest::blocking::multipart::Part::bytes(b"# New\n\nA new note.\n".to_vec())
                .file_name("new.md"),
        );
        let r = Server::client()
            .post(s.url("/v1/collections/disk/documents"))
            .multipart(form)
            .send()
            .unwrap();
        (r.status().as_u16(), r.json::<serde_json::Value>().unwrap())
    };
    wait_until("kb turns read-only", Duration::from_secs(10), || {
        refused(&s).0 == 507
    });
    let (_, body) = refused(&s);
    assert_eq!(body["error"]["code"], "insufficient_storage", "{body}");
    assert_eq!(s.delete(&format!("/v1/documents/{doc}")), 507);
    assert_eq!(
        s.search("disk", "spring tide", 1)[0]["doc_name"],
        "tides.md"
    );
    let (st, ans) = s.post_json(
        "/v1/ask",
        &json!({"collection": "disk", "question": "How high is the spring tide?", "stream": false}),
    );
    assert_eq!(st, 200, "{ans}");

    // A restart on the nearly full disk: up, read-only, reads work.
    s.restart();
    assert_eq!(
        s.search("disk", "spring tide", 1)[0]["doc_name"],
        "tides.md"
    );
    assert_eq!(refused(&s).0, 507);

    // Room again: writes resume by themselves.
    std::fs::remove_file(&ballast).unwrap();
    wait_until("kb writable again", Duration::from_secs(10), || {
        s.get("/v1/collections/disk").0 == 200 && refused(&s).0 == 202
    });

    // A job running when the disk fills up waits, says why, and finishes once there is room.
    let (st, up) = s.upload("disk", &[("manifest.md", big_doc(4000))]);
    assert_eq!(st, 202, "{up}");
    let job = up["documents"][0]["job_id"].as_str().unwrap().to_string();
    wait_until("embedding under way", Duration::from_secs(120), || {
        let (_, j) = s.get(&format!("/v1/jobs/{job}"));
        assert_ne!(
            j["status"], "done",
            "the job ended before the disk filled (make it longer)"
        );
        j["stage"] == "embed" && j["done"].as_i64().unwrap_or(0) > 0
    });
    let ballast = fill_to(fs.path(), 40 << 20);
    wait_until("the job pauses", Duration::from_secs(20), || {
        let (_, j) = s.get(&format!("/v1/jobs/{job}"));
        j["status"] == "queued"
            && j["error"]
                .as_str()
                .is_some_and(|e| e.contains("waiting for disk space"))
    });
    // It stays paused (no failure, no busy loop) while the disk is full.
    std::thread::sleep(Duration::from_secs(2));
    let (_, j) = s.get(&format!("/v1/jobs/{job}"));
    assert_eq!(j["status"], "queued", "{j}");
    std::fs::remove_file(&ballast).unwrap();
    let j = s.wait_job(&job);
    assert_eq!(j["status"], "done", "{j}");
    let (_, c) = s.get("/v1/collections/disk");
    assert_eq!(c["points"], c["chunks"], "{c}");
    s.stop();

    // Too full even to open the index: a clear refusal, not a crash.
    let _ballast = fill_to(fs.path(), 8 << 20);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kb"));
    cmd.args(["serve", "--addr", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .env("KB_MODELS_DIR", models_dir());
    scrub_kb_env(&mut cmd);
    cmd.env("KB_MODELS_DIR", models_dir());
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{:?}: {err}", out.status);
    assert!(err.contains("MiB free"), "{err}");
}
