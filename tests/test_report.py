"""Things people look at: the run report (Markdown, HTML, plots), the logs behind it, TensorBoard
events, progress bars, and `compare`. The report is also rendered in a real headless Chromium."""

import base64
import io
import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml
from matplotlib import image as mpimg

from budgetlora import cli
from budgetlora.evaluation.compare import compare_runs, write_comparison
from budgetlora.config import load_config
from budgetlora.errors import UserError
from budgetlora.evaluation.report import write_report
from budgetlora import train
from budgetlora.training.schedule import lr_schedule

from .conftest import tiny_config

REPORT_PLOTS = {"curves.png", "lr_schedule.png", "confusion_matrix.png", "per_class.png", "test_confusion_matrix.png"}


def _history(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _purple(rgb: np.ndarray) -> np.ndarray:
    """Pixels of the confusion matrices' "Purples" colormap (no other figure uses purple)."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return (b - g > 25) & (r - g > 10)


def _rgb255(path) -> np.ndarray:
    return mpimg.imread(path)[..., :3].astype(float) * 255


def _copy_run(src, dst):
    """A run directory without the heavy parts (adapter, checkpoint, events, report)."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("adapter", "checkpoint", "tensorboard", "plots", "report.*"))
    return dst


# ---------------------------------------------------------------- what training leaves behind


def test_training_writes_the_report_and_the_logs_behind_it(trained_run):
    out, metrics = trained_run
    assert (out / "report.html").is_file() and (out / "report.md").is_file()
    assert {p.name for p in (out / "plots").glob("*.png")} == REPORT_PLOTS

    # train_log.csv: step 1, every 10 steps, the last; the rates are the schedule's, exactly
    log = pd.read_csv(out / "train_log.csv")
    total = metrics["total_steps"]
    assert list(log["step"]) == [1, *range(10, total + 1, 10)]
    cfg = load_config(out / "config.yaml")
    schedule = lr_schedule(cfg, total)
    assert np.allclose(log["lr"], schedule[log["step"] - 1], rtol=1e-12, atol=0)
    assert schedule.max() == pytest.approx(cfg.train.lr) and schedule[0] == 0.0  # 10% warmup from 0
    assert log["loss"].iloc[-5:].mean() < log["loss"].iloc[:3].mean()  # it learns
    assert 0 <= log["accuracy"].min() and log["accuracy"].iloc[-1] > 0.5

    history = _history(out)
    assert all(0 <= h["train_accuracy"] <= 1 for h in history) and history[-1]["train_accuracy"] > 0.5

    # val_predictions.csv reproduces the validation metrics it was drawn from
    preds = pd.read_csv(out / "val_predictions.csv")
    assert len(preds) == metrics["val_rows"]
    assert (preds["true"] == preds["pred"]).mean() == pytest.approx(metrics["val"]["accuracy"])
    assert preds["confidence"].between(0.25, 1).all()  # 4 classes: the top probability is >= 1/4


def test_report_plots_are_real_images_not_blank(trained_run):
    out, _ = trained_run
    for path in (out / "plots").glob("*.png"):
        pixels = _rgb255(path)
        height, width = pixels.shape[:2]
        assert height >= 300 and width >= 500, path.name
        assert pixels.std() > 20, path.name  # not a flat colour
        assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50, path.name  # lines, text, fills
    # the confusion matrices, and only they, are purple: what the browser test looks for
    for name in REPORT_PLOTS:
        count = _purple(_rgb255(out / "plots" / name)).sum()
        assert (count > 5000) == name.endswith("confusion_matrix.png"), (name, count)


def test_html_report_is_self_contained_and_says_what_matters(trained_run):
    out, metrics = trained_run
    page = (out / "report.html").read_text()
    images = re.findall(r'<img [^>]*src="([^"]+)"', page)
    assert len(images) == len(REPORT_PLOTS)
    assert all(src.startswith("data:image/png;base64,") for src in images)
    assert not re.search(r'(src|href)="(http|file|/)', page)  # nothing outside the file
    embedded = {base64.b64decode(src.split(",", 1)[1]) for src in images}
    assert embedded == {(out / "plots" / name).read_bytes() for name in REPORT_PLOTS}
    low, high = metrics["val"]["accuracy_ci95"]
    assert f"95% bootstrap CI {100 * low:.2f}% to {100 * high:.2f}%" in page
    budget = json.loads((out / "budget.json").read_text())
    assert f"<strong>trainable total</strong></td><td>{budget['trainable']:,}</td>" in page
    for module in budget["adapter_by_module"]:
        assert f"adapter: {module}" in page
    for name in metrics["val"]["label_names"]:
        assert f"<td>{name}</td>" in page  # per-class table
    assert "samples/s" in page and "wall time" in page
    assert "lr: 0.01" in page  # the resolved config

    markdown = (out / "report.md").read_text()
    linked = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)
    assert sorted(linked) == sorted(f"plots/{name}" for name in REPORT_PLOTS)
    assert "| class | precision | recall | F1 | support |" in markdown


def test_report_shows_a_sample_of_misclassified_texts(trained_run, tmp_path):
    out = _copy_run(trained_run[0], tmp_path / "run")
    preds = pd.read_csv(out / "val_predictions.csv")
    preds["pred"] = preds["true"]
    preds.loc[:29, "pred"] = ["money" if t != "money" else "tech" for t in preds.loc[:29, "true"]]
    preds.loc[:29, "confidence"] = np.linspace(0.9, 0.3, 30)
    preds.loc[:29, "text"] = [f"row {i:02d} | <b>bold</b> {t} " + "x" * 400 for i, t in enumerate(preds.loc[:29, "text"])]
    preds.to_csv(out / "val_predictions.csv", index=False)
    write_report(out)
    markdown = (out / "report.md").read_text()
    assert "30 of 120 validation rows are misclassified; a random sample of 20" in markdown
    section = markdown.split("## Misclassified validation texts")[1].split("##")[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| text")]
    assert len(rows) == 20
    confidences = [float(row.rsplit("|", 2)[-2].strip().rstrip("%")) for row in rows]
    assert confidences == sorted(confidences, reverse=True)
    wrong = {(text[:6], true, pred) for text, true, pred in preds.loc[:29, ["text", "true", "pred"]].values}
    for row in rows:
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", row)[1:-1]]
        assert cells[0].startswith("row ") and "\\| <b>bold</b>" in cells[0] and cells[0].endswith("x...")
        assert len(cells[0]) < 320  # cut at 300 characters
        assert (cells[0][:6], cells[1], cells[2]) in wrong
    page = (out / "report.html").read_text()
    assert "<b>bold</b>" not in page and page.count("&lt;b&gt;bold&lt;/b&gt;") == 20  # escaped, not markup


def test_report_of_something_that_is_not_a_run(tmp_path, capsys):
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.yaml").write_text("recipe: x\n")
    for target in (tmp_path / "missing", tmp_path / "half"):
        assert cli.main(["report", str(target)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and str(target) in err
    assert not (tmp_path / "half" / "report.html").exists()


def test_a_failing_report_warns_and_keeps_the_run(tiny_model_dir, synthetic_csv, tmp_path, monkeypatch, capsys):
    import budgetlora.evaluation.report

    def broken(run_dir):
        raise ValueError("no figures today")

    monkeypatch.setattr(budgetlora.evaluation.report, "write_report", broken)
    cfg = tiny_config(tiny_model_dir, synthetic_csv, "train.epochs=1", "train.report=true")
    metrics = train(cfg, tmp_path / "run", log=lambda message: None)
    warning = capsys.readouterr().err.strip()
    assert warning.count("\n") == 0 and warning.startswith(
        "budgetlora: warning: run report not written (ValueError: no figures today); retry with")
    assert (tmp_path / "run" / "metrics.json").is_file() and metrics["steps"] > 0
    assert not (tmp_path / "run" / "report.html").exists()


# ---------------------------------------------------------------- a real browser


def test_report_renders_in_headless_chromium_and_shows_the_confusion_matrix(trained_run, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium; .ci/run installs it)")
    out = trained_run[0]

    def screenshot(html_path, name):
        png = tmp_path / name
        subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                        "--disable-background-networking", "--disable-component-update", "--disable-sync",
                        "--hide-scrollbars", f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={png}",
                        "--window-size=1280,7000", html_path.resolve().as_uri()],
                       capture_output=True, timeout=180, check=True)
        return _rgb255(png)

    shown = screenshot(out / "report.html", "report.png")
    in_pngs = sum(_purple(_rgb255(out / "plots" / n)).sum() for n in ("confusion_matrix.png", "test_confusion_matrix.png"))
    in_page = _purple(shown).sum()
    assert in_page > 0.8 * in_pngs > 0  # both heatmaps drawn, at about their own size
    assert shown.std() > 20

    # the check can fail: the same page with the heatmaps' pixels swapped for another figure's
    page = (out / "report.html").read_text()
    other = base64.b64encode((out / "plots" / "per_class.png").read_bytes()).decode()
    for name in ("confusion_matrix.png", "test_confusion_matrix.png"):
        page = page.replace(base64.b64encode((out / "plots" / name).read_bytes()).decode(), other)
    (tmp_path / "without.html").write_text(page)
    assert _purple(screenshot(tmp_path / "without.html", "without.png")).sum() < 0.01 * in_pngs


# ---------------------------------------------------------------- tracking


def test_tensorboard_events_hold_the_logged_scalars(trained_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, metrics = trained_run
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/accuracy", "val/loss", "val/accuracy", "val/macro_f1",
            "final/val_accuracy", "final/test_accuracy"} <= scalars
    history = _history(out)
    val = events.Scalars("val/accuracy")
    assert [e.step for e in val] == [h["step"] for h in history]
    assert [e.value for e in val] == pytest.approx([h["val_accuracy"] for h in history])
    log = pd.read_csv(out / "train_log.csv")
    lr = events.Scalars("train/lr")
    assert [e.step for e in lr] == list(log["step"])
    assert [e.value for e in lr] == pytest.approx(list(log["lr"]), rel=1e-6)
    assert events.Scalars("final/test_accuracy")[0].value == pytest.approx(metrics["test"]["accuracy"])


@pytest.mark.parametrize("tracker", ["mlflow", "wandb"])
def test_a_tracker_that_is_not_installed_is_one_line_with_the_pip_command(
        tracker, tiny_model_dir, synthetic_csv, tmp_path, monkeypatch):
    import accelerate.utils

    monkeypatch.setattr(accelerate.utils, f"is_{tracker}_available", lambda: False)
    cfg = tiny_config(tiny_model_dir, synthetic_csv, f"train.tracker={tracker}")
    with pytest.raises(UserError, match=f"train.tracker={tracker} needs the {tracker} package; `pip install {tracker}`"):
        train(cfg, tmp_path / "run", log=lambda message: None)
    assert not (tmp_path / "run").exists()


def test_config_rejects_an_unknown_tracker():
    with pytest.raises(UserError, match="train.tracker: 'neptune' is not allowed; choose one of tensorboard"):
        load_config("r6-qkv-a24", ["train.tracker=neptune"])


def test_resume_drops_train_log_rows_after_the_checkpoint(tmp_path):
    from budgetlora import rundir

    path = tmp_path / "train_log.csv"
    path.write_text("step,epoch,loss,accuracy,lr,samples_per_s\n1,0.1,1.0,0.2,0.0,5.0\n10,1,0.9,0.3,0.1,5.0\n"
                    "20,2,0.8,0.4,0.1,5.0\n")
    rundir.truncate_logs(tmp_path, 10)
    assert list(pd.read_csv(path)["step"]) == [1, 10]


# ---------------------------------------------------------------- progress


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_bar_in_a_terminal_and_one_line_per_evaluation_in_logs(
        tiny_model_dir, synthetic_csv, tmp_path, monkeypatch):
    settings = ["train.max_steps=10", "train.eval_every=5", "train.progress=true"]
    cfg = tiny_config(tiny_model_dir, synthetic_csv, *settings)
    lines = []
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # not a terminal: no bar, one log line per evaluation
    train(cfg, tmp_path / "logged", log=lines.append)
    assert "train:" not in sys.stderr.getvalue() and "samples_s=" not in sys.stderr.getvalue()
    assert [line.split()[1] for line in lines if line.startswith("step ")] == ["5/10", "10/10"]

    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    lines = []
    train(cfg, tmp_path / "bar", log=lines.append)
    shown = terminal.getvalue()
    assert "train:" in shown and "10/10" in shown
    assert all(key in shown for key in ("loss=", "lr=", "samples_s="))
    assert re.search(r"<\d\d:\d\d", shown)  # the ETA
    assert not [line for line in lines if line.startswith("step ")]  # evaluations go through the bar


def test_prediction_shows_a_bar_only_in_a_terminal(trained_run, monkeypatch):
    from budgetlora.evaluation.metrics import compute_logits
    from budgetlora.adapters.model import load_run

    model, tokenizer, cfg, _ = load_run(trained_run[0])
    ids = [np.array(tokenizer("goal team match")["input_ids"])] * 300
    for stream, expect_bar in ((io.StringIO(), False), (_Terminal(), True)):
        monkeypatch.setattr(sys, "stderr", stream)
        logits = compute_logits(model, ids, 64, tokenizer.pad_token_id, progress=True)
        assert logits.shape == (300, 4)
        assert ("predict:" in stream.getvalue() and "/300" in stream.getvalue()) == expect_bar


# ---------------------------------------------------------------- compare


@pytest.fixture
def three_runs(trained_run, tmp_path):
    """Copies of the trained run that differ in rank, size, accuracy and time."""
    runs = []
    for name, r, params, acc, seconds in (("small", 2, 5000, 0.80, 3.0), ("large", 8, 12000, 0.95, 9.0),
                                          ("mid", 4, 7492, 0.90, 5.0)):
        out = _copy_run(trained_run[0], tmp_path / name)
        config = yaml.safe_load((out / "config.yaml").read_text())
        config["adapter"]["r"] = r
        (out / "config.yaml").write_text(yaml.safe_dump(config))
        metrics = json.loads((out / "metrics.json").read_text())
        metrics.update(trainable_params=params, train_seconds=seconds)
        metrics["val"]["accuracy"] = acc - 0.01
        metrics["val"]["macro_f1"] = acc - 0.02
        (out / "metrics.json").write_text(json.dumps(metrics))
        history = _history(out)
        for h in history:
            h["val_accuracy"] = acc - 0.05
        history[1]["val_accuracy"] = acc
        (out / "metrics.jsonl").write_text("".join(json.dumps(h) + "\n" for h in history))
        runs.append(out)
    return runs


def test_compare_table_rows_and_sort_order(three_runs):
    frame = compare_runs(three_runs)
    assert list(frame["run"]) == ["small", "large", "mid"]
    assert list(frame["r"]) == [2, 8, 4]
    assert list(frame["trainable_params"]) == [5000, 12000, 7492]
    assert list(frame["best_val_accuracy"]) == pytest.approx([0.80, 0.95, 0.90])
    assert list(frame["val_macro_f1"]) == pytest.approx([0.78, 0.93, 0.88])
    assert list(compare_runs(three_runs, sort="best_val_accuracy")["run"]) == ["large", "mid", "small"]
    assert list(compare_runs(three_runs, sort="trainable_params")["run"]) == ["small", "mid", "large"]
    assert list(compare_runs(three_runs, sort="train_seconds")["run"]) == ["small", "mid", "large"]
    with pytest.raises(UserError, match="--sort speed: not a column"):
        compare_runs(three_runs, sort="speed")


def test_compare_command_prints_and_writes_csv_markdown_and_plot(three_runs, tmp_path, capsys):
    out = tmp_path / "cmp"
    assert cli.main(["compare", *map(str, three_runs), "--sort", "val_macro_f1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].split()[:4] == ["run", "recipe", "method", "r"]
    assert [line.split()[0] for line in printed[1:4]] == ["large", "mid", "small"]
    assert "95.00%" in printed[1] and "12,000" in printed[1]
    csv = pd.read_csv(out / "compare.csv")
    assert list(csv["run"]) == ["large", "mid", "small"] and list(csv["r"]) == [8, 4, 2]
    markdown = (out / "compare.md").read_text().splitlines()
    assert len(markdown) == 2 + 3 and markdown[2].startswith("| large | r6-qkv-a24 | lora | 8 |")
    pixels = _rgb255(out / "compare.png")
    assert pixels.shape[0] >= 300 and pixels.shape[1] >= 800 and pixels.std() > 20


def test_compare_names_two_runs_with_the_same_folder_name_by_path(three_runs, tmp_path):
    twin = _copy_run(three_runs[0], tmp_path / "elsewhere" / "small")
    frame = compare_runs([three_runs[0], twin])
    assert list(frame["run"]) == [str(three_runs[0]), str(twin)]
    paths = write_comparison(frame, tmp_path / "cmp")
    assert paths["plot"].is_file()


def test_compare_refuses_a_folder_that_is_not_a_run(three_runs, tmp_path, capsys):
    assert cli.main(["compare", str(three_runs[0]), str(tmp_path)]) == 2
    assert "is not a finished run" in capsys.readouterr().err
