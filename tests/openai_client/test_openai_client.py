"""kb's OpenAI-compatible API driven by the official `openai` Python package as a real client.

Starts a real kb (binary from KB_BIN, model files from KB_MODELS_DIR) on a random loopback
port with a fresh data directory, uploads a small document over HTTP, waits until it is
indexed, then lists models, streams a completion, asks for a non-streamed one and provokes
errors. Run by scripts/test.sh; stdlib unittest, so only `openai` needs installing.
"""

import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
import unittest
import urllib.request
import uuid

import openai

DOC_NAME = "zephyr.md"
DOC = b"""# Zephyr Deployment Guide

## Ports

The zephyr daemon listens on port 7412 by default. Change it with the `listen_port` option.

## Backups

Snapshots of the zephyr catalog are written every 45 minutes to the spool directory.
"""
QUESTION = "Which port does the zephyr daemon listen on by default?"


def start_kb(data_dir):
    """Start `kb serve` on a random port; returns (process, base URL)."""
    binary = os.environ.get("KB_BIN")
    if not binary:
        raise RuntimeError("KB_BIN must point at the kb binary")
    # kb reads every KB_* variable as configuration: pass only the ones meant for it.
    env = {k: v for k, v in os.environ.items() if not k.startswith("KB_") or k == "KB_MODELS_DIR"}
    env["KB_LOG"] = os.environ.get("KB_LOG", "warn")
    proc = subprocess.Popen(
        [binary, "serve", "--addr", "127.0.0.1:0", "--data-dir", data_dir],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        text=True,
    )
    found = {}

    def read_first_line():
        found["line"] = proc.stdout.readline()
        # Keep draining so the server never blocks on a full pipe.
        for _ in proc.stdout:
            pass

    threading.Thread(target=read_first_line, daemon=True).start()
    deadline = time.time() + 120
    while "line" not in found:
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            raise RuntimeError(f"kb did not start (exit code {proc.poll()})")
        time.sleep(0.05)
    m = re.match(r"kb listening on (http://\S+)", found["line"])
    if not m:
        proc.kill()
        raise RuntimeError(f"unexpected first line from kb: {found['line']!r}")
    return proc, m.group(1)


def http_json(method, url, body=None, headers=None):
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    with urllib.request.urlopen(req, timeout=60) as r:
        return r.status, json.loads(r.read())


def upload(base, collection, name, data):
    """Multipart upload of one file; returns the job id."""
    boundary = uuid.uuid4().hex
    body = (
        f"--{boundary}\r\n"
        f'Content-Disposition: form-data; name="file"; filename="{name}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode() + data + f"\r\n--{boundary}--\r\n".encode()
    status, v = http_json(
        "POST",
        f"{base}/v1/collections/{collection}/documents",
        body,
        {"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert status == 202, v
    return v["documents"][0]["job_id"]


def wait_job(base, job_id):
    deadline = time.time() + 300
    while time.time() < deadline:
        _, job = http_json("GET", f"{base}/v1/jobs/{job_id}")
        if job["status"] in ("done", "failed"):
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not finish")


class OpenAIClientTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="kb-openai-")
        cls.proc, cls.base = start_kb(os.path.join(cls.tmp, "data"))
        try:
            job = wait_job(cls.base, upload(cls.base, "default", DOC_NAME, DOC))
            assert job["status"] == "done", job
        except BaseException:
            cls.tearDownClass()
            raise
        cls.client = openai.OpenAI(
            base_url=cls.base + "/v1", api_key="not-used-by-kb", max_retries=0, timeout=120
        )

    @classmethod
    def tearDownClass(cls):
        cls.proc.kill()
        cls.proc.wait()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def test_models_list(self):
        models = self.client.models.list()
        ids = [m.id for m in models.data]
        self.assertEqual(ids, ["kb", "kb/default"])
        for m in models.data:
            self.assertEqual(m.object, "model")
            self.assertEqual(m.owned_by, "kb")
            self.assertGreater(m.created, 1_600_000_000)
        self.assertEqual(self.client.models.retrieve("kb/default").id, "kb/default")

    def test_streamed_completion(self):
        stream = self.client.chat.completions.create(
            model="kb",
            messages=[{"role": "user", "content": QUESTION}],
            stream=True,
            stream_options={"include_usage": True},
            temperature=0,
        )
        chunks = list(stream)
        content = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
        self.assertGreater(len(content), 1, "the answer arrives in several chunks")
        answer = "".join(content)
        self.assertIn("7412", answer)
        self.assertEqual(chunks[0].choices[0].delta.role, "assistant")
        self.assertEqual(len({c.id for c in chunks}), 1)
        self.assertTrue(chunks[0].id.startswith("chatcmpl-"))
        finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
        self.assertEqual([c.choices[0].finish_reason for c in finals], ["stop"])
        # The usage chunk comes last, with no choices.
        self.assertEqual(chunks[-1].choices, [])
        self.assertIsNotNone(chunks[-1].usage)
        self.assertEqual(
            chunks[-1].usage.total_tokens,
            chunks[-1].usage.prompt_tokens + chunks[-1].usage.completion_tokens,
        )
        # An aware client reads the sources off the first chunk, the citations off the last.
        sources = chunks[0].model_extra["kb"]["sources"]
        citations = finals[0].model_extra["kb"]["citations"]
        self.assertTrue(citations)
        self.assertEqual(sources[citations[0] - 1]["doc_name"], DOC_NAME)

    def test_non_streamed_completion(self):
        completion = self.client.chat.completions.create(
            model="kb/default",
            messages=[
                {"role": "system", "content": "Answer briefly."},
                {"role": "user", "content": "How often are catalog snapshots written?"},
                {"role": "assistant", "content": "Every 45 minutes [1]."},
                {"role": "user", "content": QUESTION},
            ],
            max_tokens=200,
        )
        self.assertEqual(completion.object, "chat.completion")
        self.assertEqual(completion.model, "kb/default")
        self.assertEqual(len(completion.choices), 1)
        choice = completion.choices[0]
        self.assertEqual(choice.finish_reason, "stop")
        self.assertEqual(choice.message.role, "assistant")
        self.assertIn("7412", choice.message.content)
        self.assertIsNotNone(completion.usage)
        kb = completion.model_extra["kb"]
        self.assertFalse(kb["declined"])
        self.assertTrue(kb["citations"])
        self.assertIn(f"[{kb['citations'][0]}]", choice.message.content)
        self.assertEqual(kb["sources"][kb["citations"][0] - 1]["doc_name"], DOC_NAME)

    def test_errors(self):
        for stream in (False, True):
            with self.assertRaises(openai.NotFoundError) as cm:
                self.client.chat.completions.create(
                    model="kb/no-such-collection",
                    messages=[{"role": "user", "content": QUESTION}],
                    stream=stream,
                )
            self.assertEqual(cm.exception.status_code, 404)
            self.assertEqual(cm.exception.code, "model_not_found")
            self.assertEqual(cm.exception.param, "model")
            self.assertEqual(cm.exception.type, "invalid_request_error")
        with self.assertRaises(openai.NotFoundError):
            self.client.models.retrieve("gpt-4o")
        with self.assertRaises(openai.BadRequestError) as cm:
            self.client.chat.completions.create(model="kb", messages=[])
        self.assertEqual(cm.exception.param, "messages")
        with self.assertRaises(openai.BadRequestError) as cm:
            self.client.chat.completions.create(
                model="kb", messages=[{"role": "user", "content": QUESTION}], n=2
            )
        self.assertEqual(cm.exception.param, "n")


if __name__ == "__main__":
    unittest.main(verbosity=2)
