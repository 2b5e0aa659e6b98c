"""Files: how budgetlora writes, reads and owns the files it makes, in one place.

* Atomic writes: every file appears complete under its final name or not at all. It is written
  to a temporary file in the same folder, flushed to the disk (fsync), then renamed over the
  final name (a rename within one filesystem is atomic). A folder (a PEFT adapter, a run that
  --overwrite replaces) is built beside its final name and swapped in only when complete.
* Ownership: a folder is owned by one process at a time through an OS lock (`fcntl.flock`) on a
  lock file beside it, which holds the owner's pid for the message a second writer gets. The
  kernel drops the lock when its owner dies, so a stale lock is simply taken over.
* Reading back: a truncated or corrupt file is one UserError naming the file and the fix.
* OSErrors (disk full, permission denied, read-only filesystem) become one UserError naming the
  file being written and what to do.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import re
import secrets
import shutil
from pathlib import Path

from .errors import UserError, first_line

_DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
_NO_PERMISSION = {errno.EACCES, errno.EPERM}


# ---------------------------------------------------------------- errors


def as_os_error(error: BaseException) -> OSError | None:
    """The OSError behind `error`: itself, or one a library wrapped in its own message
    (safetensors says "I/O error: No space left on device (os error 28)")."""
    if isinstance(error, OSError):
        return error
    found = re.search(r"os error (\d+)", str(error))
    if found:
        code = int(found.group(1))
        return OSError(code, os.strerror(code))
    return None


def write_error(error: OSError, path: Path | str) -> UserError:
    """One line for an OSError met while writing `path`."""
    path = Path(path)
    if error.errno in _DISK_FULL:
        return UserError(f"disk full writing {path}: free space on its disk or choose another --out")
    if error.errno in _NO_PERMISSION:
        return UserError(f"permission denied writing {path}: choose another --out or make {path.parent} writable")
    if error.errno == errno.EROFS:
        return UserError(f"read-only filesystem at {path}: choose another --out")
    return UserError(f"cannot write {path} ({error.strerror or error}): check the disk or choose another --out")


def raise_as_write_error(error: BaseException, path: Path | str) -> None:
    """Raise `write_error` if `error` is (or wraps) an OSError; return otherwise."""
    os_error = as_os_error(error)
    if os_error is not None and not isinstance(error, UserError):
        raise write_error(os_error, path) from None


def os_error_line(error: OSError) -> str:
    """One line for an OSError that reached the command line without a writer naming its file."""
    where = f" ({error.filename})" if error.filename else ""
    if error.errno in _DISK_FULL:
        return f"disk full{where}: free space or choose another --out"
    return f"{error.strerror or type(error).__name__}{where}"


def corrupt(path: Path | str, error: BaseException, fix: str) -> UserError:
    """One line for a file budgetlora wrote that cannot be read back."""
    return UserError(f"{path} is truncated or corrupt ({first_line(error, limit=160)}); {fix}")


# ---------------------------------------------------------------- atomic writes


def _fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable (POSIX); a no-op where folders cannot be opened."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def temp_sibling(path: Path, kind: str = "tmp") -> Path:
    """A fresh hidden name beside `path`: `.NAME.KIND-PID-RANDOM`."""
    return path.with_name(f".{path.name}.{kind}-{os.getpid()}-{secrets.token_hex(3)}")


def remove(path: Path) -> None:
    """Delete a file or folder if it is there; best effort (a cleanup never hides the error it follows)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


@contextlib.contextmanager
def atomic_path(path: Path | str):
    """Yield a temporary path beside `path` for any library to write to; on a clean exit it is
    fsynced and renamed to `path`, on an error it is removed and `path` is left as it was."""
    path = Path(path)
    tmp = temp_sibling(path)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        remove(tmp)
        raise_as_write_error(e, path)
        raise
    _fsync_dir(path.parent)


def write_bytes(path: Path | str, data: bytes) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def write_text(path: Path | str, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: Path | str, obj) -> None:
    write_text(path, json.dumps(obj, indent=2) + "\n")


def write_csv(path: Path | str, frame) -> None:
    """A pandas DataFrame as CSV, without the index."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def save_torch(path: Path | str, obj) -> None:
    """torch.save, atomically. Serialised in memory first: torch.save writing to a full disk
    fails with an opaque RuntimeError and leaves a partial file, our write gives ENOSPC."""
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_bytes(path, buffer.getbuffer())


def append_line(path: Path | str, line: str) -> None:
    """Append one line to a log (metrics.jsonl, train_log.csv) in a single write, so a kill
    leaves at most one partial last line, which every reader of these logs skips."""
    data = (line.rstrip("\n") + "\n").encode("utf-8")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
    except OSError as e:
        raise write_error(e, path) from None


@contextlib.contextmanager
def staged_dir(final: Path | str):
    """Yield an empty folder beside `final` to build in; on a clean exit it replaces `final`
    (see `swap_in`), on an error it is removed and `final` is left as it was."""
    final = Path(final)
    staging = temp_sibling(final)
    try:
        staging.mkdir(parents=True)
        yield staging
        swap_in(staging, final)
    except BaseException as e:
        remove(staging)
        raise_as_write_error(e, final)
        raise


def swap_in(new: Path, final: Path) -> None:
    """Put folder `new` at `final`. The old `final` is first renamed to `.NAME.old-*`, then
    deleted: a kill between the two renames leaves it there, and `recover` puts it back."""
    old = temp_sibling(final, "old") if final.exists() else None
    if old is not None:
        os.replace(final, old)
    os.replace(new, final)
    _fsync_dir(final.parent)
    if old is not None:
        remove(old)


def recover(final: Path) -> None:
    """Undo what a kill in the middle of a write left beside `final`: its temporary files are
    removed, and a `final` lost between the two renames of `swap_in` is put back. Call it only
    while owning the folder (a live writer's temporary files look the same)."""
    if not final.parent.is_dir():
        return
    olds = sorted(final.parent.glob(f".{glob_escape(final.name)}.old-*"))
    if olds and not final.exists():
        os.replace(olds.pop(), final)
    for leftover in olds + list(final.parent.glob(f".{glob_escape(final.name)}.tmp-*")):
        remove(leftover)


def recover_tree(folder: Path) -> None:
    """`recover` every name under `folder` (and `folder` itself) that a kill left temporary
    files or an old copy of. Call it only while owning `folder`."""
    recover(folder)
    if not folder.is_dir():
        return
    finals = {leftover.with_name(_SIBLING.match(leftover.name).group(1))
              for leftover in folder.rglob(".*") if _SIBLING.match(leftover.name)}
    for final in sorted(finals, key=lambda p: len(p.parts), reverse=True):
        recover(final)


_SIBLING = re.compile(r"^\.(.+)\.(?:tmp|old)-\d+-[0-9a-f]+$")


def readable_dir(final: Path) -> Path:
    """`final`, or, while a writer is between the two renames of `swap_in`, the old copy."""
    if final.exists():
        return final
    olds = sorted(final.parent.glob(f".{glob_escape(final.name)}.old-*")) if final.parent.is_dir() else []
    return olds[-1] if olds else final


def glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


# ---------------------------------------------------------------- checks before writing


def check_new_file(path: Path | str, *, overwrite: bool, flag: str = "--out") -> Path:
    """Refuse, before any work, to replace an existing file without --overwrite or to write
    into a folder that does not exist."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path} is a folder; give a file name for {flag}")
    if path.exists() and not overwrite:
        raise UserError(f"{path} already exists; choose another {flag} or pass --overwrite")
    if not path.parent.is_dir():
        raise UserError(f"folder {path.parent} does not exist; create it or choose another {flag}")
    return path


# ---------------------------------------------------------------- reading back


def read_json(path: Path | str, fix: str):
    """JSON that budgetlora wrote; a missing, truncated or corrupt file is one UserError."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path} is missing; {fix}") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise corrupt(path, e, fix) from None


def read_jsonl(path: Path | str) -> list[dict]:
    """The records of a log budgetlora appends to; a partial last line (a kill mid-append) is skipped."""
    records = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        with contextlib.suppress(ValueError):
            if line.strip():
                records.append(json.loads(line))
    return records


def load_torch(path: Path | str, fix: str):
    """torch.load of a file budgetlora wrote (our own checkpoints: full unpickling is allowed)."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise UserError(f"{path} is missing; {fix}") from None
    except Exception as e:  # noqa: BLE001 -- zip, pickle, EOF, tensor errors: all mean "corrupt"
        raise corrupt(path, e, fix) from None


# ---------------------------------------------------------------- ownership


def lock_path(folder: Path) -> Path:
    """The lock file of `folder`: beside it, so it survives the folder being swapped."""
    return folder.with_name(f".{folder.name}.lock")


class FolderLock:
    """An exclusive OS lock on `folder` for the life of one process (or until `release`).

    Written here rather than with the `filelock` package because a second writer must be told
    who owns the folder: filelock truncates the lock file on every attempt, so the owner's pid
    cannot live in it. fcntl.flock is the OS lock both use on POSIX.
    """

    def __init__(self, folder: Path | str, what: str = "run directory"):
        self.folder, self.what = Path(folder), what
        self.path = lock_path(self.folder)
        self._fd = None

    def acquire(self) -> "FolderLock":
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            owner = owner_pid(self.folder, wait=2.0)
            who = f"process {owner}" if owner and owner > 0 else "another process"
            raise UserError(f"{self.what} {self.folder} is in use by {who}; wait for it to finish, "
                            f"stop it, or choose another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def owner_pid(folder: Path | str, wait: float = 0.0) -> int | None:
    """The pid of the live process that owns `folder`, or None if no one does (-1: locked by a
    process whose pid cannot be read).

    The owner writes its pid just after taking the lock, so for a moment the file is empty or
    still names a dead earlier owner; `wait` seconds are spent waiting for a live pid to appear.
    """
    import fcntl
    import time

    path = lock_path(Path(folder))
    deadline = time.monotonic() + wait
    while True:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            return None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                text = os.pread(fd, 32, 0).decode(errors="replace").strip()
                pid = int(text) if text.isdigit() else -1
            else:
                fcntl.flock(fd, fcntl.LOCK_UN)
                return None
        finally:
            os.close(fd)
        if (pid > 0 and _alive(pid)) or time.monotonic() >= deadline:
            return pid if pid > 0 and _alive(pid) else -1
        time.sleep(0.02)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True
