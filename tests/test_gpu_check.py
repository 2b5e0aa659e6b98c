"""benchmarks/gpu.sh, the one-call GPU check, so it does not rot before a GPU is lent: `--dry-run`
end to end (every stage on tiny models, the JSON files the device call brings back: their keys,
sane values, targets with met true/false, within the device tool's limits on files), and its
pure parts (sizes, targets, data fallback, a missing MPNet pack) without a subprocess.

The dry run takes about 50 s of CPU time on 2 cores (four Python processes that each import torch
and transformers, seven pipelines, one default run), more wall time on a busy machine, so it is
marked slow; the rest is instant."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from gpucheck import inputs, plan, progress, summary  # noqa: E402

STAGES = ["env", "speed-roberta", "speed-mpnet", "default-run"]
TARGET_NAMES = [t[0] for t in plan.TARGETS]


@pytest.mark.slow
def test_dry_run_writes_every_result(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable, "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu.sh"), "--dry-run"], capture_output=True,
                          text=True, env=env, timeout=1800)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    files = sorted(p.name for p in out.iterdir())
    assert files == sorted([f"{s}.json" for s in STAGES] + ["summary.json", "gpu-check.log"])
    assert len(files) <= 8 and all(re.fullmatch(r"[A-Za-z0-9._-]+", f) for f in files)  # what $OUT brings back

    records = {s: json.loads((out / f"{s}.json").read_text()) for s in STAGES}
    for name, r in records.items():
        assert r["stage"] == name and r["dry_run"] is True and r["status"] == "ok", (name, r.get("log_tail"))
        assert r["seconds"] > 0 and r["command"]

    setup = records["env"]
    assert setup["environment"]["packages"]["torch"]["version"]
    assert all(m["ok"] for m in setup["models"].values())
    assert Path(setup["data"]["path"]).is_file() and setup["data"]["rows"] > 0
    assert isinstance(setup["data"]["fallback"], bool)
    assert 0 < setup["sizes"]["rows"] <= plan.DRY.rows

    for stage, pipelines in (("speed-roberta", plan.ROBERTA_PIPELINES), ("speed-mpnet", plan.PIPELINES)):
        rows = records[stage]["report"]["summary"]
        assert list(rows) == pipelines.split(","), stage
        for name, row in rows.items():
            assert row["loop_samples_per_s"] > 0 and row["infer_samples_per_s"] > 0, (stage, name)
            assert row["mfu"] > 0 and row["peak_mem_train_mib"] is not None, (stage, name)
            assert 0 <= row["val_accuracy"] <= 1, (stage, name)
            logged = records[stage]["from_log"][name]  # what a stage stopped at its cap would still give
            assert logged["loop_samples_per_s"] == pytest.approx(row["loop_samples_per_s"], rel=0.01, abs=0.1)

    run = records["default-run"]
    assert run["command_wall_seconds"] > 0 and 0 <= run["val_accuracy"] <= 1
    assert run["metrics"]["recipe"] == "default" and run["metrics"]["steps"] > 0
    assert run["last_evaluation"].startswith(f"step {run['metrics']['steps']}/")

    report = json.loads((out / "summary.json").read_text())
    assert report["dry_run"] is True and report["finished"] is True
    assert {s: v["status"] for s, v in report["stages"].items()} == dict.fromkeys(STAGES, "ok")
    assert [t["name"] for t in report["targets"]] == TARGET_NAMES
    assert all(isinstance(t["met"], bool) and t["measured"] and t["value"] > 0 for t in report["targets"])
    assert report["speed"]["speed-roberta"]["pipelines"]["budgetlora"]["loop_samples_per_s"] > 0


def test_sizes_fit_the_data():
    assert plan.fit(plan.GPU, 27_190) == {"rows": 20_000, "val": 3_000, "epochs": 1.0, "published": 4_000,
                                          "eval_batch": plan.GPU.eval_batch}
    small = plan.fit(plan.GPU, 3_400)  # the bundled sample
    assert small["val"] == 425 and small["rows"] == 2_975 and small["published"] == 2_975
    assert sum(plan.GPU.speed_caps) + plan.GPU.default_cap < plan.GPU.budget <= 9 * 60


def test_targets_met_missed_and_unmeasured():
    roberta = {"status": "ok", "report": {"summary": {"budgetlora": {"loop_samples_per_s": 16_000.0,
                                                                     "infer_samples_per_s": 12_000.0}}}}
    stages = {"speed-roberta": roberta, "default-run": {"status": "ok", "command_wall_seconds": 31.0}}
    got = {t["name"]: (t["met"], t["measured"]) for t in summary.targets(stages)}
    assert got == {"roberta_base_train_samples_per_s": (True, True), "roberta_base_infer_samples_per_s": (False, True),
                   "mpnet_default_run_wall_s": (False, True)}
    failed = summary.targets({"default-run": {"status": "timeout", "command_wall_seconds": 185.0, "timeout_s": 185}})
    assert all(t["met"] is False and t["measured"] is False and t["value"] is None for t in failed)
    assert "cap of 185 s" in failed[-1]["note"]


def test_figures_survive_a_stage_stopped_at_its_cap():
    output = ("[speed 10:00:01] budgetlora: batch 32, auto, 625 steps\n"
              "[speed 10:00:20] budgetlora: loop 1523.4 samples/s, step -, 81234 tokens/s, val acc 0.8812, "
              "wall 19.2s, infer 21000.5 samples/s, other processes 0.01 cores\n"
              "[speed 10:00:21] trainer-tuned: batch 32, bf16, 625 steps\n")
    logged = progress.speed_pipelines(output)
    assert list(logged) == ["budgetlora"] and logged["budgetlora"]["step_samples_per_s"] is None
    stage = {"status": "timeout", "from_log": logged}
    assert summary.targets({"speed-roberta": stage})[0]["value"] == 1523.4
    train = "step 1530/4590 epoch 1.00 train_loss 0.3 val_loss 0.2 val_acc 0.9100 val_f1 0.91 900.1 samples/s *\n"
    assert progress.last_evaluation("precision bf16\n" + train + "report: x\n") == train.strip()


def test_missing_data_falls_back_to_the_bundled_sample(tmp_path):
    chosen = inputs.choose_data(str(tmp_path / "absent.csv.gz"))
    assert chosen["fallback"] is True and "not found" in chosen["note"]
    assert Path(chosen["path"]) == inputs.FALLBACK_DATA.resolve() and chosen["rows"] > 1_000


def test_missing_mpnet_pack_is_reported_not_raised(tmp_path):
    joined = inputs.assemble_mpnet(tmp_path / "mpnet", tmp_path / "model", log=lambda m: None)
    assert joined["ok"] is False and "no packed model" in joined["error"] and joined["parts_found"] == []
