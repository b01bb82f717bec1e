#!/usr/bin/env python3
"""Run a QA set (the format of ../shared/eval/qa.jsonl) against a running kb server and write
results in the format ../shared/eval/score.py reads, one file per retrieval mode.

Usage:
  python3 benches/eval_retrieval.py --server http://127.0.0.1:8080 --collection eval \
      --qa ../shared/eval/qa.jsonl --out test-artifacts/eval [--modes hybrid,dense,sparse] [--k 10]
  python3 ../shared/eval/score.py test-artifacts/eval/results-hybrid.jsonl

Retrieval goes through POST /v1/search in each mode; answers (hybrid mode only) through
POST /v1/ask with "stream": false, so they take the same path as the web page. A stopgap until
`kb eval` exists; standard library only.
"""
import argparse
import json
import os
import time
import urllib.request


def post(server, path, body):
    req = urllib.request.Request(
        server.rstrip("/") + path,
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=300) as r:
        return json.load(r)


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))] if xs else 0.0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--server", required=True)
    ap.add_argument("--collection", required=True)
    ap.add_argument("--qa", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--modes", default="hybrid,dense,sparse")
    ap.add_argument("--k", type=int, default=10)
    a = ap.parse_args()
    items = [json.loads(l) for l in open(a.qa) if l.strip()]
    os.makedirs(a.out, exist_ok=True)
    for mode in a.modes.split(","):
        lat, ask_lat = [], []
        path = os.path.join(a.out, f"results-{mode}.jsonl")
        with open(path, "w") as f:
            for it in items:
                t = time.perf_counter()
                r = post(a.server, "/v1/search",
                         {"collection": a.collection, "query": it["question"], "top_k": a.k, "mode": mode})
                lat.append((time.perf_counter() - t) * 1000)
                row = {"id": it["id"], "retrieved": [h["text"] for h in r["results"]],
                       "chunk_ids": [h["chunk_id"] for h in r["results"]],
                       "scores": [h["score"] for h in r["results"]]}
                if mode == "hybrid":
                    t = time.perf_counter()
                    ans = post(a.server, "/v1/ask",
                               {"collection": a.collection, "question": it["question"], "stream": False})
                    ask_lat.append((time.perf_counter() - t) * 1000)
                    row["answer"] = ans.get("answer", "")
                    row["declined"] = bool(ans.get("declined"))
                else:
                    row["answer"] = ""
                f.write(json.dumps(row) + "\n")
        print(f"{mode}: {len(items)} items -> {path}; /v1/search p50 {pct(lat, 50):.1f} ms, "
              f"p95 {pct(lat, 95):.1f} ms" +
              (f"; /v1/ask p50 {pct(ask_lat, 50):.1f} ms, p95 {pct(ask_lat, 95):.1f} ms" if ask_lat else ""))


if __name__ == "__main__":
    main()
