#!/usr/bin/env python
"""Load test for `budgetlora serve`: N requests from C concurrent clients over loopback.

Two modes:

  --url URL        load a server that is already running (any TEI-shaped /predict).
  --serve PATH [PATH ...]
                   start `python -m budgetlora serve PATH ...` itself on a free loopback port (several
                   folders: their ensemble), once with dynamic batching and once with --no-batching
                   (one request per model call), load each the same way, stop it with SIGTERM, and
                   compare.

Every request is one text (`{"inputs": "..."}`), sent with aiohttp (httpx without it) from the bundled AG News evaluation sample
(`--texts FILE` for others: a CSV with a `text` column; `--words W` cuts each to its first W
words, for short query-like inputs). Reported per load: requests, errors
(any status but 200, or a failed connection), wall seconds, throughput (requests/s), p50/p99
latency (ms), and from the server's /metrics the model calls made and the mean inputs per call.
The count (-n) and a wall-clock cap (--max-seconds) bound every load; it stays on 127.0.0.1.

  python benchmarks/loadtest.py --serve runs/quickstart/run -n 1024 -c 32 --threads 2 \
      --out benchmarks/results/loadtest.json
  python benchmarks/loadtest.py --url http://127.0.0.1:8080 -n 512 -c 32
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def load_texts(path: str | None = None, words: int | None = None) -> list[str]:
    """The texts to send: a CSV's `text` column (default: the bundled AG News evaluation sample),
    each cut to its first `words` words when given (short, query-like inputs)."""
    import pandas as pd

    if path is None:
        from budgetlora.quickstart import sample_files

        path = sample_files()[1]
    texts = [t for t in pd.read_csv(path)["text"].astype(str).tolist() if t.strip()]
    return [" ".join(t.split()[:words]) for t in texts] if words else texts


async def _load(url: str, texts: list[str], n: int, concurrency: int, headers: dict, max_seconds: float) -> dict:
    """aiohttp when installed (a few times less client CPU per request than httpx, which matters
    when client and server share two cores), else httpx."""
    try:
        import aiohttp  # noqa: F401
    except ImportError:
        return await _load_httpx(url, texts, n, concurrency, headers, max_seconds)
    return await _load_aiohttp(url, texts, n, concurrency, headers, max_seconds)


async def _clients(post, texts: list[str], n: int, concurrency: int, max_seconds: float) -> dict:
    """`concurrency` clients taking request numbers from one counter; `post(body)` -> status."""
    latencies, statuses, next_index = [], [], iter(range(n))
    deadline = time.perf_counter() + max_seconds

    async def client():
        for i in next_index:
            if time.perf_counter() > deadline:
                return
            started = time.perf_counter()
            statuses.append(await post({"inputs": texts[i % len(texts)]}))
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return _summary(latencies, statuses, time.perf_counter() - started, concurrency)


async def _load_aiohttp(url, texts, n, concurrency, headers, max_seconds) -> dict:
    import aiohttp

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(url, connector=connector, headers=headers,
                                     timeout=aiohttp.ClientTimeout(total=60)) as session:
        async def post(body):
            try:
                async with session.post("/predict", json=body) as response:
                    await response.read()
                    return response.status
            except (aiohttp.ClientError, asyncio.TimeoutError) as e:
                return type(e).__name__

        return await _clients(post, texts, n, concurrency, max_seconds)


async def _load_httpx(url, texts, n, concurrency, headers, max_seconds) -> dict:
    import httpx

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60.0, headers=headers) as http:
        async def post(body):
            try:
                return (await http.post("/predict", json=body)).status_code
            except httpx.HTTPError as e:
                return type(e).__name__

        return await _clients(post, texts, n, concurrency, max_seconds)


def _summary(latencies: list[float], statuses: list, wall: float, concurrency: int) -> dict:
    ms = np.asarray(latencies) * 1000
    errors = sum(1 for s in statuses if s != 200)
    return {"requests": len(statuses), "concurrency": concurrency, "errors": errors,
            "error_statuses": sorted({str(s) for s in statuses if s != 200}),
            "wall_seconds": round(wall, 3), "throughput_rps": round(len(statuses) / wall, 1) if wall else None,
            "p50_ms": round(float(np.percentile(ms, 50)), 1) if len(ms) else None,
            "p99_ms": round(float(np.percentile(ms, 99)), 1) if len(ms) else None}


def run_load(url: str, texts: list[str], n: int = 512, concurrency: int = 32, api_key: str | None = None,
             max_seconds: float = 120.0) -> dict:
    """Send `n` single-text /predict requests from `concurrency` clients; figures + the server's batch stats."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    before = batch_stats(url, headers)
    result = asyncio.run(_load(url.rstrip("/"), texts, n, concurrency, headers, max_seconds))
    after = batch_stats(url, headers)
    if before and after:
        calls = after["calls"] - before["calls"]
        result["model_calls"] = int(calls)
        result["mean_inputs_per_call"] = round((after["inputs"] - before["inputs"]) / calls, 2) if calls else None
    return result


def batch_stats(url: str, headers: dict) -> dict | None:
    """Model calls and inputs so far, from budgetlora's /metrics (None for a server without them)."""
    import httpx

    try:
        text = httpx.get(url.rstrip("/") + "/metrics", headers=headers, timeout=10).text
    except httpx.HTTPError:
        return None
    found = {k: re.search(rf"^budgetlora_batch_size_{k} (\S+)$", text, re.M) for k in ("count", "sum")}
    if not all(found.values()):
        return None
    return {"calls": float(found["count"].group(1)), "inputs": float(found["sum"].group(1))}


# ---------------------------------------------------------------- --serve: start, load, stop, compare


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(paths: list[str], extra: list[str], port: int, threads: int | None) -> subprocess.Popen:
    args = [sys.executable, "-m", "budgetlora", "serve", *map(str, paths), "--port", str(port), *extra]
    if threads:
        args += ["--threads", str(threads)]
    log = tempfile.TemporaryFile("w+")  # not a pipe: a chatty server must never block on it
    process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, text=True)
    process.log = log
    return process


def wait_healthy(url: str, process: subprocess.Popen, timeout: float = 120.0) -> None:
    import httpx

    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            process.log.seek(0)
            raise RuntimeError(f"the server exited ({process.returncode}): {process.log.read()[-2000:]}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise RuntimeError(f"the server at {url} was not healthy within {timeout:.0f} s")


def stop_server(process: subprocess.Popen) -> int:
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


def cpu_seconds(pid: int | None = None) -> float | None:
    """Busy CPU seconds of the whole machine (pid None) or of one process, from /proc."""
    try:
        if pid is None:
            fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:8]]
            return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # all but idle, iowait
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
    except (OSError, ValueError, IndexError):
        return None


def wait_until_idle(max_wait: float, threshold: float = 0.3, window: float = 3.0) -> float:
    """Sleep until the machine's other processes use < `threshold` cores for two windows running."""
    started, quiet = time.perf_counter(), 0
    while time.perf_counter() - started < max_wait and quiet < 2:
        before, mine = cpu_seconds(), cpu_seconds(os.getpid())
        time.sleep(window)
        if before is None or mine is None:
            break
        others = (cpu_seconds() - before - (cpu_seconds(os.getpid()) - mine)) / window
        quiet = quiet + 1 if others < threshold else 0
    return round(time.perf_counter() - started, 1)


def serve_and_load(paths: list[str], texts: list[str], *, batching: bool, n: int, concurrency: int, threads: int | None,
                   warmup: int, max_seconds: float, extra: list[str] = (), wait_idle: float = 0) -> dict:
    """Start the server (batching on or off), warm it up, load it, stop it; the figures, with the
    CPU cores other processes used meanwhile (`other_cores`: well above 0 means noisy figures)."""
    waited = wait_until_idle(wait_idle) if wait_idle else 0.0
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = start_server(paths, [*extra, *([] if batching else ["--no-batching"])], port, threads)
    try:
        wait_healthy(url, process)
        served = server_info(url)
        if warmup:
            run_load(url, texts, warmup, concurrency, max_seconds=max_seconds)
        counters = cpu_seconds(), cpu_seconds(process.pid), cpu_seconds(os.getpid()), time.perf_counter()
        result = run_load(url, texts, n, concurrency, max_seconds=max_seconds)
        result.update(_cpu_split(counters, process.pid))
    finally:
        result_code = stop_server(process)
    return {"batching": batching, **served, **result, "waited_for_idle_s": waited, "server_exit_code": result_code}


def server_info(url: str, headers: dict | None = None) -> dict:
    """What the server says it runs (GET /info): backend and precision, recorded next to its figures."""
    import httpx

    info = httpx.get(f"{url}/info", headers=headers or {}, timeout=10).json()
    return {"backend": info.get("backend"), "precision": info.get("precision")}


def _cpu_split(counters: tuple, server_pid: int) -> dict:
    machine0, server0, client0, t0 = counters
    wall = time.perf_counter() - t0
    now = cpu_seconds(), cpu_seconds(server_pid), cpu_seconds(os.getpid())
    if None in (machine0, server0, client0) or None in now:
        return {}
    server, client = now[1] - server0, now[2] - client0
    return {"server_cores": round(server / wall, 2), "client_cores": round(client / wall, 2),
            "other_cores": round(max(0.0, (now[0] - machine0) - server - client) / wall, 2)}


def compare(paths: list[str], texts: list[str], *, n: int, concurrency: int, threads: int | None, warmup: int,
            max_seconds: float, extra: list[str] = (), wait_idle: float = 0, repeat: int = 1) -> dict:
    """Batching on, then off, `repeat` times interleaved (so drifting load hits both alike); the
    speedup of the median throughputs, every round kept."""
    runs = [serve_and_load(paths, texts, batching=b, n=n, concurrency=concurrency, threads=threads, warmup=warmup,
                           max_seconds=max_seconds, extra=extra, wait_idle=wait_idle)
            for _ in range(repeat) for b in (True, False)]
    median = {b: float(np.median([r["throughput_rps"] for r in runs if r["batching"] is b])) for b in (True, False)}
    return {"runs": runs, "median_throughput_rps": {"batching": median[True], "no_batching": median[False]},
            "speedup": round(median[True] / median[False], 2) if median[False] else None}


def machine() -> dict:
    model = platform.processor()
    try:
        found = re.search(r"Model name:\s*(.+)", subprocess.run(["lscpu"], capture_output=True, text=True).stdout)
        model = found.group(1).strip() if found else model
    except OSError:
        pass
    import torch

    from budgetlora.hardware import NATIVE_BF16_FLAGS, cpu_flags, native_bf16_cpu

    flags = sorted(cpu_flags() & {*NATIVE_BF16_FLAGS, "avx512_vnni", "amx_int8", "amx_tile", "avx512f", "avx2"})
    return {"cpu_model": model, "cpus": os.cpu_count(), "cpu_flags": flags, "native_bf16": native_bf16_cpu(),
            "torch": torch.__version__, "python": platform.python_version()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--url", help="a running server, e.g. http://127.0.0.1:8080")
    target.add_argument("--serve", metavar="PATH", nargs="+",
                        help="run or export folder(s; several: their ensemble): start the server, batching on and off")
    p.add_argument("-n", "--requests", type=int, default=512, help="requests per load (default %(default)s)")
    p.add_argument("-c", "--concurrency", type=int, default=32, help="concurrent clients (default %(default)s)")
    p.add_argument("--threads", type=int, help="--serve: the server's --threads")
    p.add_argument("--warmup", type=int, default=64, help="--serve: requests sent before measuring (default 64)")
    p.add_argument("--max-seconds", type=float, default=120.0, help="wall-clock cap per load (default 120)")
    p.add_argument("--api-key", help="--url: the server's API key")
    p.add_argument("--texts", help="CSV with a text column (default: the bundled AG News evaluation sample)")
    p.add_argument("--words", type=int, help="cut every text to its first WORDS words (short inputs)")
    p.add_argument("--server-arg", action="append", default=[], help="--serve: extra `serve` flag (repeatable)")
    p.add_argument("--repeat", type=int, default=1, help="--serve: interleaved on/off rounds (default 1)")
    p.add_argument("--wait-idle", type=float, default=0, metavar="SECONDS",
                   help="--serve: before each load, wait up to SECONDS for other processes to leave the CPU")
    p.add_argument("--out", help="write the figures as JSON here")
    args = p.parse_args(argv)
    texts = load_texts(args.texts, args.words)
    if args.url:
        report = run_load(args.url, texts, args.requests, args.concurrency, args.api_key, args.max_seconds)
    else:
        report = compare(args.serve, texts, n=args.requests, concurrency=args.concurrency, threads=args.threads,
                         warmup=args.warmup, max_seconds=args.max_seconds, extra=args.server_arg,
                         wait_idle=args.wait_idle, repeat=args.repeat)
        report["threads"] = args.threads
    publish("loadtest.py", argv, report, args.out)
    return 0


def publish(script: str, argv: list[str] | None, figures: dict, out: str | None) -> None:
    """The figures with the command, machine and date that produced them: printed, and written
    as JSON to `out` when given."""
    report = {"command": " ".join([f"python benchmarks/{script}", *(argv if argv is not None else sys.argv[1:])]),
              "machine": machine(), "date": time.strftime("%Y-%m-%d"), **figures}
    print(json.dumps(report, indent=2))
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    raise SystemExit(main())
