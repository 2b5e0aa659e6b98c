"""Reliability: one owner per run directory, nothing half-written, no lost work, one line per fault.

Real faults where the machine allows them: two processes racing for one run, SIGKILL in the
middle of a checkpoint write, a full (tmpfs) disk, truncated and garbage files of each kind.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from budgetlora.cli import main
from budgetlora.errors import UserError
from budgetlora.training.loop import train

from .conftest import TINY_TRAIN, tiny_config

KILL_STEP = 40  # of 90: evaluations and checkpoints every 20 steps
LONG = ("train.epochs=3", "train.eval_every=20")


def quiet(message):
    pass


def die_after(step):
    """A `log` for train() that stops the run like Ctrl-C right after the checkpoint of `step`."""
    def log(message):
        if message.startswith(f"step {step}/"):
            raise KeyboardInterrupt
    return log


def cli_args(model_dir, train_csv, *extra):
    args = ["--recipe", "r6-qkv-a24"]
    for override in [f"model.name={model_dir}", f"data.train={train_csv}", *TINY_TRAIN, *LONG, *extra]:
        args += ["--set", override]
    return args


def one_line_error(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("budgetlora: error: "), stderr[-2000:]
    assert "Traceback" not in stderr
    return lines[0]


def same_weights(a: Path, b: Path) -> bool:
    wa, wb = (load_file(p / "adapter" / "adapter_model.safetensors") for p in (a, b))
    return wa.keys() == wb.keys() and all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)


def history_steps(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, tiny_model_dir, synthetic_csv):
    """The uninterrupted reference run (90 steps)."""
    out = tmp_path_factory.mktemp("full") / "run"
    metrics = train(tiny_config(tiny_model_dir, synthetic_csv, *LONG), out, log=quiet)
    return out, metrics


@pytest.fixture(scope="module")
def killed_run(tmp_path_factory, tiny_model_dir, synthetic_csv):
    """A run stopped right after its checkpoint of step 40; tests work on copies of it."""
    out = tmp_path_factory.mktemp("killed") / "run"
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(tiny_model_dir, synthetic_csv, *LONG), out, log=die_after(KILL_STEP))
    return out


@pytest.fixture
def killed_copy(killed_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(killed_run, out)
    return out


# ---------------------------------------------------------------- one owner per run directory


def test_two_trains_into_one_folder_exactly_one_wins(tiny_model_dir, synthetic_csv, tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "budgetlora", "train", "--out", str(out),
               *cli_args(tiny_model_dir, synthetic_csv)]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]
    results = [(p, *p.communicate(timeout=600)) for p in procs]
    codes = sorted(p.returncode for p, _, _ in results)
    assert codes == [0, 2], [(p.returncode, err[-1500:]) for p, _, err in results]
    winner = next(p for p, _, _ in results if p.returncode == 0)
    loser_err = next(err for p, _, err in results if p.returncode == 2)
    assert f"in use by process {winner.pid}" in one_line_error(loser_err)
    assert history_steps(out) == [20, 40, 60, 80, 90]  # one run's evaluations, each once
    assert json.loads((out / "metrics.json").read_text())["steps"] == 90


def test_resume_of_a_run_that_is_still_training_is_refused(tiny_model_dir, synthetic_csv, tmp_path, full_run):
    out = tmp_path / "run"
    second = {}

    def log(message):  # while the first run trains, a second process tries to resume it
        if message.startswith("step 40/"):
            second["done"] = subprocess.run([sys.executable, "-m", "budgetlora", "train", "--resume", "--out", str(out)],
                                            capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})

    metrics = train(tiny_config(tiny_model_dir, synthetic_csv, *LONG), out, log=log)
    assert second["done"].returncode == 2
    assert f"in use by process {os.getpid()}" in one_line_error(second["done"].stderr)
    assert history_steps(out) == [20, 40, 60, 80, 90]
    assert metrics["val"]["loss"] == full_run[1]["val"]["loss"]


def test_a_stale_lock_of_a_dead_process_is_taken_over(tiny_model_dir, synthetic_csv, tmp_path):
    from budgetlora import files

    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from budgetlora.files import FolderLock
        FolderLock({str(out)!r}).acquire()
        print("locked", flush=True)
        time.sleep(600)
    """)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    assert files.owner_pid(out) == holder.pid
    with pytest.raises(UserError, match=f"in use by process {holder.pid}"):
        train(tiny_config(tiny_model_dir, synthetic_csv), out, log=quiet)
    assert not out.exists()  # the refused run wrote nothing
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert files.owner_pid(out) is None  # the kernel dropped the dead owner's lock
    assert train(tiny_config(tiny_model_dir, synthetic_csv), out, log=quiet)["steps"] > 0


def test_a_second_writer_names_an_owner_that_has_locked_but_not_yet_written_its_pid(tmp_path):
    """The window between the owner's flock and its pid write (seen in CI: "in use by another
    process"): the second writer waits for the pid instead of reporting no one."""
    from budgetlora import files

    folder = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import fcntl, os, time
        from budgetlora.files import lock_path
        path = lock_path(__import__("pathlib").Path({str(folder)!r}))
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        os.write(fd, b"999999999\\n")  # a stale pid left by a dead owner
        fcntl.flock(fd, fcntl.LOCK_EX)
        print("locked", flush=True)
        time.sleep(0.5)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{{os.getpid()}}\\n".encode(), 0)
        time.sleep(600)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(UserError, match=f"in use by process {holder.pid};"):
            files.FolderLock(folder).acquire()
    finally:
        holder.kill()
        holder.wait()


def test_a_second_sweep_into_one_folder_is_refused(tmp_path):
    from budgetlora import files
    from budgetlora.training.sweep import load_spec, run_sweep

    with files.FolderLock(tmp_path / "sweep", "sweep folder"):
        with pytest.raises(UserError, match=f"sweep folder .* in use by process {os.getpid()}"):
            run_sweep(load_spec(None, recipe="r6-qkv-a24", set=[], grid={}, seeds=[1]), tmp_path / "sweep", log=quiet)
    assert not (tmp_path / "sweep").exists()


# ---------------------------------------------------------------- a kill at any moment


KILL_IN_CHECKPOINT_WRITE = textwrap.dedent("""
    # SIGKILL this process while it writes its Nth checkpoint to disk: the file being written is
    # cut to half its size, then the process dies before the write can finish or be renamed.
    # The bytes reach the disk either through torch.save(obj, path) or through a file that is
    # fsynced before its rename: both are hooked.
    import os, signal, sys
    import torch
    nth, seen = int(sys.argv[1]), []
    real_fsync, real_save = os.fsync, torch.save

    def die_if_nth(path):
        if "state.pt" in os.path.basename(str(path)) and "prev" not in os.path.basename(str(path)):
            seen.append(path)
            if len(seen) == nth:
                os.truncate(path, os.path.getsize(path) // 2)
                os.kill(os.getpid(), signal.SIGKILL)

    def fsync(fd):
        try:
            die_if_nth(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            pass
        return real_fsync(fd)

    def save(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        if isinstance(f, (str, os.PathLike)):
            die_if_nth(f)

    os.fsync, torch.save = fsync, save
    from budgetlora.cli import main
    sys.exit(main(sys.argv[2:]))
""")


@pytest.mark.parametrize("nth", [1, 2])
def test_sigkill_during_a_checkpoint_write_then_resume(tiny_model_dir, synthetic_csv, tmp_path, full_run, nth):
    out = tmp_path / "run"
    killed = subprocess.run([sys.executable, "-c", KILL_IN_CHECKPOINT_WRITE, str(nth), "train", "--out", str(out),
                             *cli_args(tiny_model_dir, synthetic_csv)], capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert not (out / "metrics.json").exists()
    if nth == 1:  # killed before any checkpoint existed: not a circle of refusals
        fresh = subprocess.run([sys.executable, "-m", "budgetlora", "train", "--out", str(out),
                                *cli_args(tiny_model_dir, synthetic_csv)], capture_output=True, text=True)
        assert "--resume" in one_line_error(fresh.stderr) and fresh.returncode == 2
    resumed = subprocess.run([sys.executable, "-m", "budgetlora", "train", "--resume", "--out", str(out)],
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert history_steps(out) == [20, 40, 60, 80, 90]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["val"]["loss"] == pytest.approx(full_run[1]["val"]["loss"], rel=1e-5)
    assert same_weights(out, full_run[0])
    assert not [p.name for p in (out / "checkpoint").iterdir() if ".tmp" in p.name]  # leftovers cleared


def test_partial_last_log_lines_from_a_kill_are_dropped_on_resume(killed_copy, full_run):
    with open(killed_copy / "metrics.jsonl", "a") as f:
        f.write('{"step": 60, "train_lo')  # killed in the middle of an append
    with open(killed_copy / "train_log.csv", "a") as f:
        f.write("50,1.6,0.3")
    metrics = train(None, killed_copy, resume=True, log=quiet)
    assert history_steps(killed_copy) == [20, 40, 60, 80, 90]
    log_steps = pd.read_csv(killed_copy / "train_log.csv")["step"].tolist()
    assert log_steps == sorted(set(log_steps)) and log_steps[-1] == 90
    assert metrics["val"]["loss"] == full_run[1]["val"]["loss"]


# ---------------------------------------------------------------- --overwrite loses nothing


def test_overwrite_keeps_the_old_run_until_the_new_one_has_finished(tiny_model_dir, synthetic_csv, tmp_path):
    out = tmp_path / "run"
    train(tiny_config(tiny_model_dir, synthetic_csv, "train.epochs=2"), out, log=quiet)
    old_metrics = (out / "metrics.json").read_bytes()
    old_adapter = (out / "adapter" / "adapter_model.safetensors").read_bytes()

    new_cfg = tiny_config(tiny_model_dir, synthetic_csv, *LONG, "train.lr=5e-3")
    with pytest.raises(KeyboardInterrupt):  # the new run dies half way
        train(new_cfg, out, overwrite=True, log=die_after(KILL_STEP))
    assert (out / "metrics.json").read_bytes() == old_metrics
    assert (out / "adapter" / "adapter_model.safetensors").read_bytes() == old_adapter
    assert main(["train", "--out", str(out)] + ["--set", "train.epochs=1"]) == 2  # still a finished run: refused

    metrics = train(None, out, resume=True, log=quiet)  # continues the new run, then swaps it in
    assert metrics["steps"] == 90 and "lr: 0.005" in (out / "config.yaml").read_text()
    assert history_steps(out) == [20, 40, 60, 80, 90]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".run.lock", "run"]  # no staging or old copy left


# ---------------------------------------------------------------- lost work at the end of a command


def test_evaluate_out_never_overwrites_and_checks_the_folder_first(trained_run, synthetic_test_csv, tmp_path, capsys):
    out, _ = trained_run
    existing = tmp_path / "metrics.json"
    existing.write_text("precious")
    assert main(["evaluate", str(out), "--data", str(synthetic_test_csv), "--out", str(existing)]) == 2
    assert "--overwrite" in one_line_error(capsys.readouterr().err)
    assert existing.read_text() == "precious"
    missing = tmp_path / "no-such-folder" / "metrics.json"
    assert main(["evaluate", str(out), "--data", str(synthetic_test_csv), "--out", str(missing)]) == 2
    assert "does not exist" in one_line_error(capsys.readouterr().err)
    assert main(["evaluate", str(out), "--data", str(synthetic_test_csv), "--out", str(existing), "--overwrite"]) == 0
    assert json.loads(existing.read_text())["n"] == 120


def test_evaluate_and_predict_of_an_unfinished_run_say_so(killed_copy, synthetic_test_csv, tmp_path, capsys):
    history = [json.loads(line) for line in (killed_copy / "metrics.jsonl").read_text().splitlines()]
    best_step = min(history, key=lambda r: r["val_loss"])["step"]  # train.metric is val_loss
    assert main(["evaluate", str(killed_copy), "--data", str(synthetic_test_csv)]) == 0
    warning = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(warning) == 1 and warning[0].startswith("budgetlora: warning: ")
    assert f"stopped at step {KILL_STEP} of 90" in warning[0] and f"from step {best_step}" in warning[0]
    assert "--resume" in warning[0]
    assert main(["predict", str(killed_copy), "--data", str(synthetic_test_csv), "--out", str(tmp_path / "p.csv")]) == 0
    assert "unfinished" in capsys.readouterr().err


# ---------------------------------------------------------------- corrupt and truncated files


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.fixture
def run_copy(trained_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(trained_run[0], out)
    return out


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_a_damaged_adapter_is_one_line_for_evaluate_and_predict(run_copy, synthetic_test_csv, tmp_path, capsys, damage):
    weights = run_copy / "adapter" / "adapter_model.safetensors"
    truncate(weights) if damage == "truncated" else weights.write_bytes(b"\x00garbage" * 64)
    assert main(["evaluate", str(run_copy), "--data", str(synthetic_test_csv)]) == 2
    assert str(weights) in one_line_error(capsys.readouterr().err)
    assert main(["predict", str(run_copy), "--data", str(synthetic_test_csv), "--out", str(tmp_path / "p.csv")]) == 2
    assert str(weights) in one_line_error(capsys.readouterr().err)
    assert not (tmp_path / "p.csv").exists()


@pytest.mark.parametrize("name, damage", [("config.yaml", "whole lines"),
                                          ("labels.json", "bytes"), ("adapter/adapter_config.json", "bytes")])
def test_damaged_run_files_are_one_line(run_copy, synthetic_test_csv, capsys, name, damage):
    path = run_copy / name
    if damage == "whole lines":  # still valid YAML: must not be read as defaults for the missing sections
        lines = path.read_text().splitlines(keepends=True)
        path.write_text("".join(lines[: len(lines) // 2]))
    else:
        truncate(path)
    assert main(["evaluate", str(run_copy), "--data", str(synthetic_test_csv)]) == 2
    assert name.split("/")[-1] in one_line_error(capsys.readouterr().err)


def test_a_corrupt_checkpoint_resumes_from_the_one_before(killed_copy, full_run, capsys):
    (killed_copy / "checkpoint" / "state.pt").write_bytes(b"not a checkpoint")
    assert main(["train", "--resume", "--out", str(killed_copy)]) == 0
    err = capsys.readouterr().err
    assert "state.pt is truncated or corrupt" in err and "resuming from state.prev.pt (step 20)" in err
    assert history_steps(killed_copy) == [20, 40, 60, 80, 90]
    assert json.loads((killed_copy / "metrics.json").read_text())["val"]["loss"] == full_run[1]["val"]["loss"]
    assert same_weights(killed_copy, full_run[0])


def test_both_checkpoints_damaged_is_one_line(killed_copy, capsys):
    truncate(killed_copy / "checkpoint" / "state.pt")
    (killed_copy / "checkpoint" / "state.prev.pt").write_bytes(b"\x00" * 100)
    before = (killed_copy / "metrics.jsonl").read_bytes()
    assert main(["train", "--resume", "--out", str(killed_copy)]) == 2
    line = one_line_error(capsys.readouterr().err)
    assert "state.pt is truncated or corrupt" in line and "--overwrite" in line
    assert (killed_copy / "metrics.jsonl").read_bytes() == before  # nothing touched


def test_a_truncated_token_cache_entry_is_rebuilt(tokenizer_dir, capsys):
    from transformers import AutoTokenizer

    from budgetlora.data import cache_dir, tokenize

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    texts = [f"cache entry number {i} of a test that truncates it" for i in range(50)]
    before = set(cache_dir().glob("*.arrow"))
    expected = tokenize(texts, tokenizer, 16)
    (entry,) = set(cache_dir().glob("*.arrow")) - before
    truncate(entry)
    for _ in range(2):  # rebuilt once (with a warning), then read back as usual
        again = tokenize(texts, tokenizer, 16)
        assert [a.tolist() for a in again] == [e.tolist() for e in expected]
    err = capsys.readouterr().err
    assert err.count("unreadable") == 1 and str(entry) in err


# ---------------------------------------------------------------- a full or read-only disk


@pytest.fixture
def small_disk(tmp_path):
    """A 320 KiB tmpfs (as root); remount(options) changes it, e.g. to more space or read-only."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=320k", "tmpfs", str(mount)],
                                           capture_output=True).returncode:
        pytest.skip("needs root to mount a small tmpfs (a real full disk)")

    def remount(options):
        subprocess.run(["mount", "-o", f"remount,{options}", str(mount)], check=True)

    yield mount, remount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_is_one_line_and_the_run_resumes_after_space_is_freed(
        small_disk, tiny_model_dir, synthetic_csv, full_run, capsys):
    disk, remount = small_disk
    out = disk / "run"
    assert main(["train", "--out", str(out), *cli_args(tiny_model_dir, synthetic_csv)]) == 2
    line = one_line_error(capsys.readouterr().err)
    assert line.startswith(f"budgetlora: error: disk full writing {out}") and "free space" in line
    assert (out / "checkpoint" / "state.pt").is_file()  # the checkpoint before the full disk is whole
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]  # no partial file left behind
    remount("size=16m")
    assert main(["train", "--resume", "--out", str(out)]) == 0
    assert json.loads((out / "metrics.json").read_text())["val"]["loss"] == full_run[1]["val"]["loss"]


def test_a_read_only_disk_is_one_line(small_disk, trained_run, synthetic_test_csv, capsys):
    disk, remount = small_disk
    remount("ro")
    assert main(["predict", str(trained_run[0]), "--data", str(synthetic_test_csv), "--out", str(disk / "p.csv")]) == 2
    assert "read-only filesystem" in one_line_error(capsys.readouterr().err)
