#!/usr/bin/env python3
"""Load figures for a real `kb serve` on loopback (standard library only; not run in CI).

For each configuration (by default: kb's defaults, and a baseline that behaves as kb did before
load shedding and bulk slicing: an unbounded question queue, whole ingestion batches per model
call), on a fresh data dir:
  1. idle: one question at a time, p50 (the reference for the rest);
  2. flood: 200 clients searching at once for a while: p50/p99 of answered searches, statuses;
  3. streams: 64 streamed asks at once: time to first byte p50/p99, statuses;
  4. during ingest: sequential asks while a large document (about 700 chunks) is indexed;
with the server's RSS and open descriptors before and after. Figures only; no asserts.

Usage: python3 benches/load.py [--seconds 15] [--configs default,baseline]
Env:   KB_BIN (default $CARGO_TARGET_DIR/debug/kb), KB_MODELS_DIR (default ./models)
"""

import argparse
import http.client
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/kb-target"))
BIN = os.environ.get("KB_BIN", os.path.join(TARGET, "debug", "kb"))
MODELS = os.environ.get("KB_MODELS_DIR", os.path.join(ROOT, "models"))

CONFIGS = {
    "default": {},
    # What kb did before: every question queued however long the queue, and an ingestion batch
    # (8 chunks) run as one model call.
    "baseline": {"KB_EMBEDDING__QUEUE_SIZE": "1000000", "KB_EMBEDDING__MAX_WAIT_MS": "100000000",
                 "KB_EMBEDDING__BULK_SLICE": "8"},
    "slice4": {"KB_EMBEDDING__BULK_SLICE": "4"},
}


def pct(xs, p):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


class Server:
    def __init__(self, env):
        self.tmp = tempfile.TemporaryDirectory()
        full = {k: v for k, v in os.environ.items() if not k.startswith("KB_")}
        full.update({"KB_MODELS_DIR": MODELS, "KB_LOG": "warn"})
        full.update(env)
        self.proc = subprocess.Popen(
            [BIN, "serve", "--addr", "127.0.0.1:0", "--data-dir", os.path.join(self.tmp.name, "data")],
            env=full, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        line = self.proc.stdout.readline()
        m = re.search(r"http://([\d.]+):(\d+)", line)
        if not m:
            raise SystemExit(f"kb serve did not start: {line!r}")
        self.host, self.port = m.group(1), int(m.group(2))

    def request(self, method, path, body=None, headers=None, timeout=120, want_headers=False):
        c = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        h = {"Content-Type": "application/json"} if body is not None and not isinstance(body, bytes) else {}
        h.update(headers or {})
        data = json.dumps(body) if body is not None and not isinstance(body, bytes) else body
        c.request(method, path, body=data, headers=h)
        r = c.getresponse()
        out = r.read()
        c.close()
        if want_headers:
            return r.status, out, dict(r.getheaders())
        return r.status, out

    def upload(self, collection, name, content):
        boundary = uuid.uuid4().hex
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n"
                f"Content-Type: text/markdown\r\n\r\n").encode() + content + f"\r\n--{boundary}--\r\n".encode()
        st, out = self.request("POST", f"/v1/collections/{collection}/documents", body,
                               {"Content-Type": f"multipart/form-data; boundary={boundary}"})
        assert st == 202, out
        return json.loads(out)["documents"][0]["job_id"]

    def wait_job(self, job, timeout=1800):
        end = time.time() + timeout
        while time.time() < end:
            st, out = self.request("GET", f"/v1/jobs/{job}")
            if json.loads(out)["status"] in ("done", "failed"):
                return
            time.sleep(0.2)
        raise SystemExit("job did not finish")

    def rss_mib(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return float("nan")

    def fds(self):
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.tmp.cleanup()


def document(n_entries, seed):
    out = [f"# Harbour records {seed}\n"]
    for i in range(n_entries):
        out.append(f"\n## Entry {i}\n\nOn day {i} the harbour master of port {seed} logged {i * 7 % 31} ships, "
                   f"{i * 3 % 17} of them from the northern route, and the tide stood at {(i * 13) % 9} metres. "
                   f"The pilot on duty noted fog over the breakwater and a cargo of timber bound for mill {i % 11}.\n")
    return "".join(out).encode()


def ask_once(s, q, stream=False):
    t = time.perf_counter()
    st, _ = s.request("POST", "/v1/ask", {"collection": "load", "question": q, "stream": stream, "cache": False})
    return st, time.perf_counter() - t


def run_config(name, env, seconds):
    s = Server(env)
    try:
        s.wait_job(s.upload("load", "records.md", document(120, 1)))
        time.sleep(1)
        res = {"config": name}
        res["rss_start_mib"], res["fds_start"] = round(s.rss_mib(), 1), s.fds()
        # 1. idle, one at a time.
        idle = [ask_once(s, f"How many ships were logged on day {i}?")[1] for i in range(30)]
        res["idle_ask_p50_ms"] = round(statistics.median(idle) * 1000, 1)
        # 2. 200 searching clients.
        lat, statuses, stop = [], {}, time.time() + seconds
        lock = threading.Lock()

        def searcher(k):
            i = 0
            while time.time() < stop:
                t = time.perf_counter()
                wait = 0
                try:
                    st, _, hdr = s.request("POST", "/v1/search", {"collection": "load", "query": f"tide on day {k} {i}", "top_k": 5},
                                           timeout=60, want_headers=True)
                    # A client as the official ones are: a 429 waits its Retry-After.
                    if st == 429:
                        wait = float(hdr.get("retry-after", "1"))
                except Exception:
                    st = 0
                d = time.perf_counter() - t
                with lock:
                    statuses[st] = statuses.get(st, 0) + 1
                    if st == 200:
                        lat.append(d)
                i += 1
                if wait:
                    time.sleep(min(wait, max(0.0, stop - time.time())))
        ts = [threading.Thread(target=searcher, args=(k,)) for k in range(200)]
        [t.start() for t in ts]
        [t.join() for t in ts]
        res["flood_search_p50_ms"] = round(pct(lat, 50) * 1000, 1)
        res["flood_search_p99_ms"] = round(pct(lat, 99) * 1000, 1)
        res["flood_statuses"] = statuses
        # 3. 64 streamed asks at once: time to first byte.
        ttfb, st64 = [], {}

        def streamer(k):
            c = http.client.HTTPConnection(s.host, s.port, timeout=120)
            t = time.perf_counter()
            c.request("POST", "/v1/ask", json.dumps({"collection": "load", "question": f"What did the pilot note on day {k}?", "cache": False}),
                      {"Content-Type": "application/json"})
            r = c.getresponse()
            r.read(1)
            with lock:
                ttfb.append(time.perf_counter() - t)
                st64[r.status] = st64.get(r.status, 0) + 1
            r.read()
            c.close()
        ts = [threading.Thread(target=streamer, args=(k,)) for k in range(64)]
        [t.start() for t in ts]
        [t.join() for t in ts]
        res["streams_ttfb_p50_ms"] = round(pct(ttfb, 50) * 1000, 1)
        res["streams_ttfb_p99_ms"] = round(pct(ttfb, 99) * 1000, 1)
        res["streams_statuses"] = st64
        # 4. asks during an ingest.
        job = s.upload("load", "big.md", document(1400, 2))
        during, i = [], 0
        t0 = time.time()
        while True:
            st, out = s.request("GET", f"/v1/jobs/{job}")
            if json.loads(out)["status"] in ("done", "failed"):
                break
            during.append(ask_once(s, f"How many ships from the northern route on day {i}?")[1])
            i += 1
        res["ingest_secs"] = round(time.time() - t0, 1)
        res["during_ingest_ask_p50_ms"] = round(pct(during, 50) * 1000, 1)
        res["during_ingest_ask_p99_ms"] = round(pct(during, 99) * 1000, 1)
        res["during_ingest_ratio_to_idle"] = round(pct(during, 50) / statistics.median(idle), 1)
        time.sleep(2)
        res["rss_end_mib"], res["fds_end"] = round(s.rss_mib(), 1), s.fds()
        return res
    finally:
        s.stop()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=15)
    ap.add_argument("--configs", default="baseline,default,slice4")
    a = ap.parse_args()
    for name in a.configs.split(","):
        print(json.dumps(run_config(name, CONFIGS[name], a.seconds)), flush=True)


if __name__ == "__main__":
    sys.exit(main())
