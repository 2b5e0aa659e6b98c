"""One stage of the GPU check: a subprocess in its own process group under its own timeout
(killed, group and all, when it overruns), its output appended to the check's one log file, and
its record written as OUT/<stage>.json."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path


class Check:
    """The output folder, the shared log and the deadline of the whole check; `output` is the
    last stage's whole output."""

    def __init__(self, out: Path, budget: float, dry_run: bool, cwd: Path):
        self.out, self.dry_run, self.cwd = out, dry_run, cwd
        self.out.mkdir(parents=True, exist_ok=True)
        self.log_path = out / "gpu-check.log"
        self.log_path.write_text("", encoding="utf-8")
        self.t0 = time.monotonic()
        self.deadline = self.t0 + budget
        self.output = ""

    def log(self, message: str) -> None:
        line = f"[gpu-check {time.strftime('%H:%M:%S')} +{time.monotonic() - self.t0:.0f}s] {message}"
        print(line, flush=True)
        with self.log_path.open("a", encoding="utf-8") as f:
            f.write(line + "\n")

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def run(self, name: str, command: list[str], cap: float, env: dict | None = None) -> dict:
        """Run `command`, at most `cap` seconds and never past the deadline (less a 10 s reserve
        for the summary); the record holds its status, return code, seconds and log tail."""
        timeout = max(1.0, min(cap, self.left() - 10))
        self.log(f"{name}: start (timeout {timeout:.0f}s): {' '.join(command)}")
        start_offset = self.log_path.stat().st_size
        t0 = time.monotonic()
        with self.log_path.open("a", encoding="utf-8") as sink:
            proc = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, cwd=self.cwd,
                                    env={**os.environ, **(env or {})}, start_new_session=True)
            try:
                rc, status = proc.wait(timeout=timeout), None
            except subprocess.TimeoutExpired:
                stop_group(proc)
                rc, status = None, "timeout"
        seconds = time.monotonic() - t0
        status = status or ("ok" if rc == 0 else "failed")
        with self.log_path.open("rb") as f:
            f.seek(start_offset)
            self.output = f.read().decode("utf-8", errors="replace")  # the stage's whole output, for parsing
        tail = self.output[-4000:]
        self.log(f"{name}: {status} after {seconds:.1f}s (return code {rc})")
        return {"status": status, "returncode": rc, "seconds": round(seconds, 2), "timeout_s": round(timeout, 1),
                "command": command, "log_tail": tail}

    def write(self, name: str, record: dict) -> dict:
        record = {"stage": name, "dry_run": self.dry_run, **record}
        (self.out / f"{name}.json").write_text(json.dumps(record, indent=2, default=str) + "\n", encoding="utf-8")
        return record


def stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM to the stage's process group, SIGKILL 5 s later if it still runs."""
    for sig, grace in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue
