//! Test harness: a real `kb serve` process on a random loopback port with a temporary data dir,
//! real models, and HTTP helpers.
#![allow(dead_code)]

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Where the embedding model lives: `KB_TEST_MODELS_DIR`, else `./models`.
pub fn models_dir() -> PathBuf {
    let dir = std::env::var_os("KB_TEST_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("models"));
    assert!(
        dir.join("all-MiniLM-L6-v2/model.safetensors").exists(),
        "model files missing in {} (run scripts/fetch-models.sh, or scripts/test.sh)",
        dir.display()
    );
    dir
}

/// Run the kb CLI with `args` on the data directory `data` (no KB_* of the test's own).
pub fn kb_cli(data: &std::path::Path, args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kb"));
    scrub_kb_env(&mut cmd);
    cmd.args(args)
        .arg("--data-dir")
        .arg(data)
        .env("KB_MODELS_DIR", models_dir())
        .output()
        .expect("run kb")
}

/// Real documents prepared by scripts/test-fixtures.sh.
pub fn fixture(name: &str) -> Vec<u8> {
    let dir = std::env::var_os("KB_TEST_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("test-artifacts/fixtures"));
    let p = dir.join(name);
    std::fs::read(&p).unwrap_or_else(|e| {
        panic!(
            "fixture {} missing ({e}); run scripts/test-fixtures.sh",
            p.display()
        )
    })
}

/// kb treats every `KB_*` variable as configuration (unknown keys are errors): children get
/// none of the test harness's own (`KB_TEST_*`, ...), only what a test sets.
pub fn scrub_kb_env(cmd: &mut Command) {
    for (k, _) in std::env::vars() {
        if k.starts_with("KB_") && k != "KB_LOG" {
            cmd.env_remove(k);
        }
    }
}

pub struct Server {
    pub base: String,
    pub data_dir: PathBuf,
    child: Option<Child>,
    env: Vec<(String, String)>,
    /// Where the server's stderr (its log) goes; inherited when `None`.
    log_file: Option<PathBuf>,
    /// The open-file limit (soft and hard) the server runs under, when set.
    pub nofile: Option<u64>,
    _tmp: Option<tempfile::TempDir>,
}

impl Server {
    pub fn start() -> Server {
        Server::start_with(&[])
    }

    pub fn start_with(env: &[(&str, &str)]) -> Server {
        Server::launch(None, env, None, None)
    }

    /// Start `kb serve` on `data` (default: a new temp dir), with `env`, the log written to
    /// `log` (default: inherited) and an open-file limit (default: none set).
    fn launch(
        data: Option<PathBuf>,
        env: &[(&str, &str)],
        log: Option<&std::path::Path>,
        nofile: Option<u64>,
    ) -> Server {
        let (data_dir, tmp) = match data {
            Some(d) => (d, None),
            None => {
                let tmp = tempfile::tempdir().unwrap();
                (tmp.path().join("data"), Some(tmp))
            }
        };
        let mut s = Server {
            base: String::new(),
            data_dir,
            child: None,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            log_file: log.map(|p| p.to_path_buf()),
            nofile,
            _tmp: tmp,
        };
        s.spawn();
        s
    }

    /// Like `start_with`, with the server's log (stderr) written to `log`.
    pub fn start_logging_to(env: &[(&str, &str)], log: &std::path::Path) -> Server {
        Server::launch(None, env, Some(log), None)
    }

    /// Like `start_with`, under an open-file limit of `nofile` (soft and hard).
    pub fn start_limited(env: &[(&str, &str)], nofile: u64) -> Server {
        Server::launch(None, env, None, Some(nofile))
    }

    /// Like `start_with`, on the data directory `data` (its parent is the working directory).
    pub fn start_at(data: PathBuf, env: &[(&str, &str)]) -> Server {
        Server::launch(Some(data), env, None, None)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Send SIGTERM and return at once (`stop` waits for the exit).
    pub fn sigterm(&self) {
        unsafe {
            libc_kill(self.pid() as i32, 15);
        }
    }

    /// The server's open descriptors.
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kb"));
        cmd.arg("serve")
            .arg("--addr")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .env("KB_MODELS_DIR", models_dir())
            .env(
                "KB_LOG",
                std::env::var("KB_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .current_dir(self.data_dir.parent().unwrap())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(match &self.log_file {
                Some(p) => Stdio::from(std::fs::File::create(p).expect("log file")),
                None => Stdio::inherit(),
            });
        scrub_kb_env(&mut cmd);
        cmd.env("KB_MODELS_DIR", models_dir());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        if let Some(n) = self.nofile {
            use std::os::unix::process::CommandExt;
            // SAFETY: setrlimit is async-signal-safe; nothing else runs in the forked child.
            unsafe {
                cmd.pre_exec(move || {
                    let lim = libc::rlimit {
                        rlim_cur: n,
                        rlim_max: n,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = cmd.spawn().expect("start kb serve");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            for _ in lines {}
        });
        let line = rx
            .recv_timeout(Duration::from_secs(120))
            .expect("kb serve did not report its address");
        self.base = line
            .trim()
            .strip_prefix("kb listening on ")
            .unwrap_or_else(|| panic!("unexpected first line: {line}"))
            .to_string();
        self.child = Some(child);
    }

    /// SIGKILL: no flush, no graceful anything.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Graceful stop (SIGTERM), waiting for exit.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            unsafe {
                libc_kill(c.id() as i32, 15);
            }
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Restart on the same data dir with another environment.
    pub fn restart_with(&mut self, env: &[(&str, &str)]) {
        self.stop();
        self.env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.spawn();
    }

    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Start again on the same data dir after a kill.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none());
        self.spawn();
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub fn client() -> reqwest::blocking::Client {
        reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(300))
            .build()
            .unwrap()
    }

    /// The text of `/metrics` (Prometheus exposition format).
    pub fn metrics_text(&self) -> String {
        Self::client()
            .get(self.url("/metrics"))
            .send()
            .unwrap()
            .text()
            .unwrap()
    }

    pub fn get(&self, path: &str) -> (u16, Value) {
        let r = Self::client().get(self.url(path)).send().unwrap();
        let status = r.status().as_u16();
        (status, r.json().unwrap_or(Value::Null))
    }

    pub fn delete(&self, path: &str) -> u16 {
        Self::client()
            .delete(self.url(path))
            .send()
            .unwrap()
            .status()
            .as_u16()
    }

    pub fn post_json(&self, path: &str, body: &Value) -> (u16, Value) {
        let r = Self::client()
            .post(self.url(path))
            .json(body)
            .send()
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().unwrap_or(Value::Null))
    }

    /// Upload files as multipart `file` parts.
    pub fn upload(&self, collection: &str, files: &[(&str, Vec<u8>)]) -> (u16, Value) {
        let mut form = reqwest::blocking::multipart::Form::new();
        for (name, bytes) in files {
            let part = reqwest::blocking::multipart::Part::bytes(bytes.clone())
                .file_name(name.to_string());
            form = form.part("file", part);
        }
        let r = Self::client()
            .post(self.url(&format!("/v1/collections/{collection}/documents")))
            .multipart(form)
            .send()
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().unwrap_or(Value::Null))
    }

    /// Wait for a job to finish; returns its final row.
    pub fn wait_job(&self, job_id: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            let (status, job) = self.get(&format!("/v1/jobs/{job_id}"));
            assert_eq!(status, 200, "job {job_id}: {job}");
            let st = job["status"].as_str().unwrap_or("");
            if st == "done" || st == "failed" {
                return job;
            }
            assert!(
                Instant::now() < deadline,
                "job {job_id} did not finish: {job}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn search(&self, collection: &str, query: &str, top_k: usize) -> Vec<Value> {
        let (status, v) = self.post_json(
            "/v1/search",
            &serde_json::json!({"collection": collection, "query": query, "top_k": top_k}),
        );
        assert_eq!(status, 200, "{v}");
        v["results"].as_array().cloned().unwrap_or_default()
    }

    /// POST /v1/ask and parse the SSE stream into (event, data) pairs, in order.
    pub fn ask_sse(&self, body: &Value) -> Vec<(String, Value)> {
        let r = Self::client()
            .post(self.url("/v1/ask"))
            .header("accept", "text/event-stream")
            .json(body)
            .send()
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        assert!(r
            .headers()
            .get("content-type")
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("text/event-stream"));
        parse_sse(&r.text().unwrap())
    }
}

pub fn parse_sse(text: &str) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for block in text.split("\n\n") {
        let mut event = String::from("message");
        let mut data = String::new();
        for line in block.lines() {
            if let Some(e) = line.strip_prefix("event:") {
                event = e.trim().to_string();
            } else if let Some(d) = line.strip_prefix("data:") {
                if !data.is_empty() {
                    data.push('\n');
                }
                data.push_str(d.strip_prefix(' ').unwrap_or(d));
            }
        }
        if !data.is_empty() {
            out.push((
                event,
                serde_json::from_str(&data).unwrap_or(Value::String(data)),
            ));
        }
    }
    out
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Loose form used by the eval: lower-case, runs of non-alphanumerics -> one space.
pub fn loose(s: &str) -> String {
    let mut out = String::new();
    let mut space = false;
    for c in s.to_lowercase().chars() {
        if c.is_alphanumeric() {
            if space && !out.is_empty() {
                out.push(' ');
            }
            space = false;
            out.push(c);
        } else {
            space = true;
        }
    }
    out
}

/// Serve `app` on a loopback port, on its own thread and runtime: the scripted upstreams (fault
/// injectors) that the model-call tests point kb at. Returns the base URL, `http://ADDR/v1`.
pub fn serve_upstream(app: axum::Router) -> String {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async move {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(l.local_addr().unwrap()).unwrap();
            axum::serve(l, app).await.unwrap();
        });
    });
    format!("http://{}/v1", rx.recv().unwrap())
}
