"""Shards: `budgetlora predict` under `accelerate launch`, one output from several processes.

Process i of n predicts chunks i, i+n, i+2n, ... of the input into its own hidden part file
beside the output. The processes then exchange what they wrote (`gather_object`, which is also
the barrier: every process waits there for the others), and process 0 copies the parts' chunks
back in the input's order into the one output file (atomic: complete under its name or absent)
and deletes the parts. An error in any process (a bad row in its chunk) is raised by all of
them, and no output is written. A single process (no launcher) is one shard of one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .. import files
from ..errors import UserError


@dataclass(frozen=True)
class Shard:
    """Which chunks this process predicts: those whose index is `index` modulo `count`."""

    index: int = 0
    count: int = 1

    @property
    def is_main(self) -> bool:
        return self.index == 0

    def owns(self, chunk_index: int) -> bool:
        return chunk_index % self.count == self.index


def current_shard() -> Shard:
    """This process's shard: from Accelerate's PartialState when launched with several
    processes (WORLD_SIZE > 1), else the whole input. CPU-only machines use gloo."""
    if int(os.environ.get("WORLD_SIZE", "1") or 1) <= 1:
        return Shard()
    import torch
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())
    return Shard(state.process_index, state.num_processes)


@dataclass
class PartReport:
    """What one process wrote: its part file, (chunk index, bytes, rows) per chunk, or its error."""

    shard: int
    part: str
    chunks: list
    error: str | None = None


def write_shard(out: Path, shard: Shard, chunk_bytes) -> PartReport:
    """Write this process's chunks (`chunk_bytes`: (chunk index, CSV bytes, rows) in order) into
    a hidden part file beside `out`; a UserError or OSError is reported, not raised, so that the
    other processes are not left waiting."""
    part = files.temp_sibling(out, f"part{shard.index}")
    report = PartReport(shard.index, str(part), [])
    try:
        with open(part, "wb") as f:
            for index, data, rows in chunk_bytes:
                f.write(data)
                report.chunks.append((index, len(data), rows))
    except UserError as e:
        report.error = str(e)
    except OSError as e:
        report.error = str(files.write_error(e, out))
    except BaseException:
        files.remove(part)
        raise
    return report


def join_shards(out: Path, header: bytes, mine: PartReport) -> int:
    """Exchange reports with the other processes; on process 0 write `out` (header, then every
    chunk in input order) and delete the parts. Every process returns the total row count, or
    raises the first error any of them met."""
    from accelerate.utils import gather_object

    reports = gather_object([mine])
    errors = [r.error for r in sorted(reports, key=lambda r: r.shard) if r.error]
    try:
        if errors:
            raise UserError(errors[0])
        rows = sum(chunk[2] for r in reports for chunk in r.chunks)
        if mine.shard == 0:
            _concatenate(out, header, reports)
        return rows
    finally:
        if errors or mine.shard == 0:
            for report in (reports if mine.shard == 0 else [mine]):
                files.remove(Path(report.part))


def _concatenate(out: Path, header: bytes, reports: list[PartReport]) -> None:
    """`header` and the parts' chunks in chunk order, written atomically to `out`."""
    order = sorted((index, size, report.part) for report in reports for index, size, _ in report.chunks)
    handles = {report.part: open(report.part, "rb") for report in reports}
    try:
        with files.atomic_path(out) as tmp, open(tmp, "wb") as f:
            f.write(header)
            for _, size, part in order:  # each part holds its chunks in increasing index order
                _copy_bytes(handles[part], f, size)
    finally:
        for handle in handles.values():
            handle.close()


def _copy_bytes(source, target, size: int, block: int = 1 << 20) -> None:
    while size > 0:
        data = source.read(min(block, size))
        if not data:
            raise OSError(f"part file {source.name} ended early")
        target.write(data)
        size -= len(data)

