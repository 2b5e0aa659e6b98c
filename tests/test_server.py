"""deploy.server and deploy.batcher: TEI's request/response shapes, every bad input's status code,
the API key, dynamic batching seen through /metrics (fewer model calls than requests, answers in
order, 429 when the queue is full), a failing batch answering 500 while the server goes on, a
SIGTERM that answers what is in flight, and a small loopback load test.

Most tests serve a stub Predictor (the real dataclass, a word tokenizer and logits that name the
word they saw) so they can block, fail or slow inference at will; one serves the tiny trained run.
"""

import asyncio
import importlib.util
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from budgetlora.cli import main as cli_main
from budgetlora.deploy.batcher import BatchObserver, Batcher, QueueFull
from budgetlora.deploy.predictor import Predictor, load_predictor
from budgetlora.deploy.server import ServeSettings, create_app, resolve

LABELS = ["alpha", "beta", "gamma"]
WORD_IDS = {w: 10 + i for i, w in enumerate(LABELS)}
LOADTEST = Path(__file__).resolve().parents[1] / "benchmarks" / "loadtest.py"


class WordTokenizer:
    """Whitespace words to ids: 0 = start, 2 = end, 10+ = a label word, 5 = any other word."""

    pad_token_id = 1

    def __call__(self, texts, truncation=True, max_length=None):
        rows = [[0, *(WORD_IDS.get(w, 5) for w in t.split()), 2] for t in texts]
        return {"input_ids": [r[:max_length] if truncation and max_length else r for r in rows]}


def word_logits(rows, batch_size):
    """Logits counting each label word in a row: the top label is the word the text holds."""
    return np.asarray([[float(np.sum(np.asarray(r) == WORD_IDS[w])) for w in LABELS] for r in rows], np.float32)


def stub(run_logits=word_logits, max_length=16) -> Predictor:
    return Predictor("stub", list(LABELS), max_length, WordTokenizer(), run_logits, "/srv/models/stub-run",
                     info={"model": "/srv/base/tiny-encoder", "method": "lora", "trainable": 10, "budget": 100})


@contextmanager
def client(predictor=None, **settings):
    app = create_app(predictor or stub(), ServeSettings(**settings))
    with TestClient(app, raise_server_exceptions=False) as c:  # answer 500s as a real client sees them
        yield c


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def live_server(predictor, **settings):
    """A real uvicorn on a free loopback port, in a thread; yields its URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(predictor, ServeSettings(port=port, **settings)),
                                           host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        assert time.time() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


def metric(url_or_client, name: str, **labels) -> float:
    """One sample's value from /metrics (0 if absent)."""
    get = url_or_client.get if not isinstance(url_or_client, str) else (lambda p: httpx.get(url_or_client + p))
    text = get("/metrics").text
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        m = re.match(rf"^{re.escape(name)}(?:\{{(.*)\}})? (\S+)$", line)
        if m and all(f'{k}="{v}"' in (m.group(1) or "") for k, v in labels.items()) and (wanted or not m.group(1)):
            return float(m.group(2))
    return 0.0


async def _post_all(url: str, bodies: list) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        return await asyncio.gather(*(http.post("/predict", json=b) for b in bodies))


def post_all(url: str, bodies: list) -> list[httpx.Response]:
    """All bodies POSTed to /predict at once, from as many concurrent clients."""
    return asyncio.run(_post_all(url, bodies))


# ---------------------------------------------------------------- shapes


def test_a_string_answers_one_flat_list_of_every_class_best_first():
    with client() as c:
        answer = c.post("/predict", json={"inputs": "beta beta gamma"}).json()
    assert [p["label"] for p in answer] == ["beta", "gamma", "alpha"]
    scores = [p["score"] for p in answer]
    assert scores == sorted(scores, reverse=True) and abs(sum(scores) - 1) < 1e-6


def test_a_list_answers_a_list_of_lists_in_input_order_and_teis_batch_form_too():
    with client() as c:
        flat = c.post("/predict", json={"inputs": ["gamma", "alpha", "beta"]}).json()
        tei_batch = c.post("/predict", json={"inputs": [["gamma"], ["alpha"], ["beta"]]}).json()
    assert [row[0]["label"] for row in flat] == ["gamma", "alpha", "beta"]
    assert all(len(row) == len(LABELS) for row in flat)
    assert tei_batch == flat


def test_raw_scores_are_the_logits():
    with client() as c:
        answer = c.post("/predict", json={"inputs": "alpha alpha beta", "raw_scores": True}).json()
    assert {p["label"]: p["score"] for p in answer} == {"alpha": 2.0, "beta": 1.0, "gamma": 0.0}


def test_info_names_labels_limits_budget_and_backend_but_no_server_path():
    with client(max_client_batch=7) as c:
        info = c.get("/info").json()
        assert c.get("/health").status_code == 200
    assert info["labels"] == LABELS and info["max_input_length"] == 16 and info["max_client_batch_size"] == 7
    assert info["trainable"] == 10 and info["budget"] == 100 and info["backend"] == "stub"
    assert info["precision"] == "fp32"
    assert info["model_type"]["classifier"]["id2label"] == {"0": "alpha", "1": "beta", "2": "gamma"}
    assert "/srv" not in json.dumps(info)


def test_a_real_run_answers_its_predictors_probabilities(trained_run):
    predictor = load_predictor(trained_run[0])
    texts = ["stock market shares today", "football goal coach"]
    with client(predictor) as c:
        answer = c.post("/predict", json={"inputs": texts}).json()
    logits = predictor.predict(texts)
    expected = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    for row, probs in zip(answer, expected):
        got = {p["label"]: p["score"] for p in row}
        np.testing.assert_allclose([got[n] for n in predictor.label_names], probs, atol=1e-5)


# ---------------------------------------------------------------- limits and bad input

BAD = [
    ("malformed JSON", b'{"inputs": ', 422, "Validation"),
    ("not an object", b'["alpha"]', 422, "Validation"),
    ("no inputs", b'{"text": "alpha"}', 422, "Validation"),
    ("inputs a number", b'{"inputs": 3}', 422, "Validation"),
    ("a number in the list", b'{"inputs": ["alpha", 3]}', 422, "Validation"),
    ("truncate not a bool", b'{"inputs": "alpha", "truncate": "yes"}', 422, "Validation"),
    ("raw_scores not a bool", b'{"inputs": "alpha", "raw_scores": 1}', 422, "Validation"),
    ("a pair of texts", b'{"inputs": [["alpha", "beta"]]}', 422, "Validation"),
    ("empty text", b'{"inputs": ""}', 422, "Empty"),
    ("blank text in a list", b'{"inputs": ["alpha", "   "]}', 422, "Empty"),
    ("empty list", b'{"inputs": []}', 422, "Empty"),
    ("non-UTF-8 body", '{"inputs": "caf\u00e9"}'.encode("latin-1"), 422, "Validation"),
    ("lone surrogate", b'{"inputs": "\\ud800"}', 422, "Validation"),
    ("more inputs than max_client_batch", json.dumps({"inputs": ["alpha"] * 5}).encode(), 413, "Validation"),
    ("body over max_payload", json.dumps({"inputs": "alpha " * 200}).encode(), 413, "Validation"),
    ("too long, truncate false", json.dumps({"inputs": "alpha " * 40, "truncate": False}).encode(), 413, "Validation"),
]


@pytest.mark.parametrize("body,status,error_type", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input_answers_a_tei_error(body, status, error_type):
    with client(max_client_batch=4, max_payload=1000) as c:
        response = c.post("/predict", content=body, headers={"content-type": "application/json"})
        assert response.status_code == status
        assert response.json()["error_type"] == error_type and response.json()["error"]
        assert metric(c, "budgetlora_errors_total", kind=error_type) == 1
        assert c.post("/predict", json={"inputs": "alpha"}).status_code == 200  # and the server goes on


def test_a_long_text_is_truncated_when_truncate_is_true_or_unset():
    with client() as c:
        for body in ({"inputs": "beta " * 40}, {"inputs": "beta " * 40, "truncate": True}):
            answer = c.post("/predict", json=body).json()
            assert answer[0]["label"] == "beta"


def test_unknown_routes_answer_the_same_error_shape():
    with client() as c:
        response = c.get("/models/../../etc/passwd")
    assert response.status_code == 404 and set(response.json()) == {"error", "error_type"}


def test_an_exception_in_inference_answers_500_and_the_server_goes_on():
    def fragile(rows, batch_size):
        if any(WORD_IDS["gamma"] in r for r in rows):
            raise RuntimeError("boom")
        return word_logits(rows, batch_size)

    with client(stub(fragile)) as c:
        failed = c.post("/predict", json={"inputs": "gamma"})
        assert failed.status_code == 500 and failed.json()["error_type"] == "Backend" and "boom" in failed.json()["error"]
        assert c.post("/predict", json={"inputs": "alpha"}).json()[0]["label"] == "alpha"
        assert c.get("/health").status_code == 200


def test_an_unexpected_error_outside_inference_is_a_json_500_too():
    class FragileTokenizer(WordTokenizer):
        def __call__(self, texts, **kwargs):
            if "crash" in texts:
                raise KeyError("tokenizer bug")
            return super().__call__(texts, **kwargs)

    predictor = stub()
    predictor.tokenizer = FragileTokenizer()
    with client(predictor) as c:
        failed = c.post("/predict", json={"inputs": "crash"})
        assert failed.status_code == 500 and failed.json()["error_type"] == "Backend"
        assert c.post("/predict", json={"inputs": "beta"}).json()[0]["label"] == "beta"


# ---------------------------------------------------------------- security


def test_the_api_key_guards_every_route_but_health():
    with client(api_key="s3cret") as c:
        for method, path in (("post", "/predict"), ("get", "/info"), ("get", "/metrics")):
            kwargs = {"json": {"inputs": "alpha"}} if method == "post" else {}
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
                response = getattr(c, method)(path, headers=headers, **kwargs)
                assert response.status_code == 401 and response.json()["error_type"] == "Unauthorized"
            good = getattr(c, method)(path, headers={"Authorization": "Bearer s3cret"}, **kwargs)
            assert good.status_code == 200
        assert c.get("/health").status_code == 200


def test_the_key_comes_from_the_environment_and_a_public_bind_without_one_warns(monkeypatch, capsys):
    monkeypatch.setenv("BUDGETLORA_API_KEY", "from-env")
    assert resolve(ServeSettings()).api_key == "from-env"
    assert capsys.readouterr().err == ""
    monkeypatch.delenv("BUDGETLORA_API_KEY")
    resolve(ServeSettings(host="0.0.0.0"))
    err = capsys.readouterr().err
    assert "warning" in err and "--api-key" in err and err.count("\n") == 1


@pytest.mark.parametrize("args,message", [
    (["serve"], "path"),
    (["serve", "RUN", "--port", "70000"], "--port 70000"),
    (["serve", "RUN", "--port", "eighty"], "--port"),
    (["serve", "/no/such/run"], "does not exist"),
    (["serve", "RUN", "--min-replicas", "1"], "--max-replicas"),
])
def test_bad_serve_command_lines_are_one_line_exit_2(args, message, capsys):
    assert cli_main(args) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


# ---------------------------------------------------------------- batching, order, queue


def test_concurrent_requests_share_model_calls_and_each_gets_its_own_answer():
    def slow(rows, batch_size):
        time.sleep(0.05)  # requests arrive while a batch runs and wait for the next one
        return word_logits(rows, batch_size)

    words = [LABELS[i % 3] for i in range(16)]
    with live_server(stub(slow), batch_wait_ms=20) as url:
        responses = post_all(url, [{"inputs": w} for w in words] + [{"inputs": ["gamma", "alpha", "beta"]}])
        calls = metric(url, "budgetlora_batch_size_count")
        inputs = metric(url, "budgetlora_batch_size_sum")
    assert all(r.status_code == 200 for r in responses)
    assert [r.json()[0]["label"] for r in responses[:16]] == words
    assert [row[0]["label"] for row in responses[16].json()] == ["gamma", "alpha", "beta"]
    assert inputs == 19 and calls < 17


def test_batching_off_makes_one_model_call_per_request():
    with live_server(stub(), batching=False) as url:
        post_all(url, [{"inputs": "alpha"}] * 8)
        assert metric(url, "budgetlora_batch_size_count") == 8
        assert metric(url, "budgetlora_batch_requests_bucket", le="1.0") == 8


def test_a_full_queue_answers_429_and_the_held_requests_still_finish():
    release = threading.Event()

    def blocked(rows, batch_size):
        release.wait(30)
        return word_logits(rows, batch_size)

    with live_server(stub(blocked), max_queue=2, batch_wait_ms=0) as url:
        answers = {}

        def send(name, text):
            answers[name] = httpx.post(url + "/predict", json={"inputs": text}, timeout=30)

        first = threading.Thread(target=send, args=("first", "alpha"))
        second = threading.Thread(target=send, args=("second", "beta"))
        first.start()
        _wait_for(lambda: metric(url, "budgetlora_queue_depth") == 1)
        second.start()
        _wait_for(lambda: metric(url, "budgetlora_queue_depth") == 2)
        refused = httpx.post(url + "/predict", json={"inputs": "gamma"}, timeout=30)
        release.set()
        first.join(30)
        second.join(30)
    assert refused.status_code == 429 and refused.json()["error_type"] == "Overloaded"
    assert answers["first"].json()[0]["label"] == "alpha" and answers["second"].json()[0]["label"] == "beta"


def _wait_for(condition, timeout=10.0):
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, "condition not reached"
        time.sleep(0.02)


def test_the_batcher_keeps_each_batch_within_the_token_budget():
    seen = []

    async def run():
        batcher = Batcher(lambda rows: np.zeros((len(rows), 1)), max_batch_tokens=30, wait_s=0.05,
                          observer=BatchObserver(on_batch=lambda inputs, requests: seen.append(inputs)))
        batcher.start()
        rows = [np.arange(10)] * 7  # 10 tokens each: at most 3 per batch
        out = await asyncio.gather(*(batcher.submit([r]) for r in rows))
        batcher.stop()
        return out

    out = asyncio.run(run())
    assert len(out) == 7 and max(seen) <= 3 and sum(seen) == 7


def test_the_batcher_refuses_past_max_queue_without_blocking():
    async def run():
        batcher = Batcher(lambda rows: np.zeros((len(rows), 1)), max_queue=3)  # not started: nothing drains
        first = asyncio.ensure_future(batcher.submit([np.arange(2)] * 3))
        await asyncio.sleep(0)
        with pytest.raises(QueueFull):
            await batcher.submit([np.arange(2)])
        batcher.start()
        await first
        batcher.stop()

    asyncio.run(run())


# ---------------------------------------------------------------- load test and SIGTERM


def _loadtest():
    spec = importlib.util.spec_from_file_location("loadtest", LOADTEST)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_small_loopback_load_test_has_no_errors_and_batches(trained_run):
    loadtest = _loadtest()
    texts = ["stock market shares", "football goal", "chip software users", "president election"]
    with live_server(load_predictor(trained_run[0]), batch_wait_ms=10) as url:
        report = loadtest.run_load(url, texts, n=64, concurrency=16)
    assert report["requests"] == 64 and report["errors"] == 0
    assert report["throughput_rps"] > 0 and report["p99_ms"] >= report["p50_ms"] > 0
    assert report["model_calls"] < 64


def test_sigterm_answers_the_requests_in_flight_then_exits(trained_run):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen([sys.executable, "-m", "budgetlora", "serve", str(trained_run[0]), "--port", str(port),
                                "--batch-wait-ms", "1500"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    try:
        _wait_for(lambda: process.poll() is None and _healthy(url), timeout=120)
        results = []
        sender = threading.Thread(target=lambda: results.extend(post_all(url, [{"inputs": "goal team"}] * 6)))
        sender.start()
        _wait_for(lambda: metric(url, "budgetlora_queue_depth") == 6)  # all six wait in the batcher
        process.send_signal(signal.SIGTERM)
        sender.join(60)
        code = process.wait(60)
    finally:
        if process.poll() is None:
            process.kill()
    assert [r.status_code for r in results] == [200] * 6
    assert code in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once it has shut down cleanly
    assert "Traceback" not in process.stderr.read()


def _healthy(url: str) -> bool:
    try:
        return httpx.get(url + "/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.mark.slow
def test_the_load_test_script_compares_batching_on_and_off(trained_run, tmp_path):
    out = tmp_path / "loadtest.json"
    done = subprocess.run([sys.executable, str(LOADTEST), "--serve", str(trained_run[0]), "-n", "48", "-c", "8",
                           "--warmup", "0", "--threads", "1", "--out", str(out)], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert [r["batching"] for r in report["runs"]] == [True, False]
    assert all(r["requests"] == 48 and r["errors"] == 0 for r in report["runs"])
    assert report["runs"][1]["model_calls"] == 48 and report["speedup"] > 0 and report["machine"]["cpu_model"]
