"""Time budgets (`budgetlora train --time-budget`, the quickstart's): how many training rows fit.

The arithmetic is checked exactly, then the plan, its run and the CLI's refusals on the tiny
model; the quickstart's on the real MiniLM in tests/test_minilm.py."""

import time
from types import SimpleNamespace

import pytest
import yaml
from .conftest import TINY_TRAIN, tiny_config

from budgetlora.cli import main
from budgetlora.errors import UserError
from budgetlora.training.loop import train
from budgetlora.training.time_budget import plan_time_budget
from budgetlora.training.time_budget import MIN_BUDGET_ROWS, MachineRates, inference_passes, rows_for_time_budget

RATES = MachineRates(train_s_per_row=0.02, infer_s_per_row=0.01, seconds=5.0)


def test_rows_are_what_the_budget_leaves_in_whole_batches():
    # fixed: 20 s spent + 15 s reserve + 5,000 inference rows x 0.01 s = 85 s; each row 0.03 s
    rows = rows_for_time_budget(180, 20, RATES, fixed_inference_rows=5000, available=9500, batch_size=32,
                                reserve_s=15, margin=1)
    assert rows == 3136  # floor(95 / 0.03) = 3166, down to whole batches of 32


def test_rows_stop_at_what_the_file_holds():
    rows = rows_for_time_budget(10_000, 20, RATES, fixed_inference_rows=5000, available=2000, batch_size=32,
                                reserve_s=15, margin=1)
    assert rows == 2000  # all of them, the last batch part-full as in any run


def test_the_plan_takes_the_machine_as_slower_than_measured():
    # x1.15: fixed 20 + 15 + 57.5 = 92.5 s, each row 0.0345 s; floor(87.5 / 0.0345) = 2536 -> 2528
    rows = rows_for_time_budget(180, 20, RATES, fixed_inference_rows=5000, available=9500, batch_size=32,
                                reserve_s=15, margin=1.15)
    assert rows == 2528


def test_fewer_rows_than_the_minimum_are_not_refused_when_they_all_fit():
    assert rows_for_time_budget(10_000, 20, RATES, fixed_inference_rows=5000, available=100, batch_size=32,
                                reserve_s=15, margin=1) == 100


def test_a_budget_too_short_is_refused_with_the_budget_that_fits():
    assert rows_for_time_budget(100, 20, RATES, fixed_inference_rows=5000, available=9500, batch_size=32,
                                reserve_s=15, margin=1) == 480 >= MIN_BUDGET_ROWS
    with pytest.raises(UserError) as refused:
        rows_for_time_budget(90, 20, RATES, fixed_inference_rows=5000, available=9500, batch_size=32, reserve_s=15, margin=1)
    message = str(refused.value)
    assert "\n" not in message and "at least 95 s" in message  # 85 s fixed + 320 rows x 0.03 s = 94.6 s


def test_frozen_passes_per_training_row_count_as_inference_rows():
    # 2 frozen passes per training row: each row 0.02 + 2 x 0.01 = 0.04 s; floor(95 / 0.04) = 2375 -> 2368
    rows = rows_for_time_budget(180, 20, RATES, fixed_inference_rows=5000, available=9500, batch_size=32,
                                reserve_s=15, inference_per_training_row=2, margin=1)
    assert rows == 2368


def test_epochs_multiply_the_training_share_only():
    # 2 epochs: each row 2 x 0.02 + 0.01 = 0.05 s; floor(95 / 0.05) = 1900 -> 1888
    rows = rows_for_time_budget(180, 20, RATES, fixed_inference_rows=5000, available=9500, batch_size=32,
                                reserve_s=15, epochs=2, margin=1)
    assert rows == 1888


def recipe(baseline="probe", head_init="probe", epochs=1.0, eval_every=None, batch_size=32):
    return SimpleNamespace(train=SimpleNamespace(baseline=baseline, epochs=epochs, eval_every=eval_every,
                                                 batch_size=batch_size),
                           head=SimpleNamespace(init=head_init))


@pytest.mark.parametrize("cfg, per_row, fixed", [
    # the quickstart: the probe's features of training and validation rows; the validation and
    # evaluation rows through the model (the evaluation rows' probe pass is prepaid)
    (recipe(), 1, 500 * 2 + 2000),
    (recipe(head_init="random"), 1, 500 * 2 + 2000),
    (recipe(baseline="none"), 1, 500 * 2 + 2000),  # LP-FT alone reads the same frozen features
    (recipe(baseline="none", head_init="random"), 0, 500 + 2000),  # only the fine-tuned model's passes
    # three epochs, validated at each: three validation passes
    (recipe(baseline="none", head_init="random", epochs=3.0), 0, 500 * 3 + 2000),
    # every 50 steps of 32 rows: 500 validation rows per 1,600 training rows, once more at the end
    (recipe(baseline="none", head_init="random", eval_every=50), 500 / 1600, 500 + 2000),
])
def test_inference_passes_follow_the_recipe(cfg, per_row, fixed):
    assert inference_passes(cfg, val_rows=500, test_rows=0, evaluation_rows=2000) == (per_row, fixed)


def test_test_rows_go_through_the_model_and_the_baseline():
    assert inference_passes(recipe(), val_rows=500, test_rows=700) == (1, 500 * 2 + 700 * 2)
    assert inference_passes(recipe(baseline="none"), val_rows=500, test_rows=700) == (1, 500 * 2 + 700)


# ---------------------------------------------------------------- on the tiny model


def test_plan_sizes_the_rows_and_the_run_trains_them(tmp_path, tiny_model_dir, synthetic_csv):
    cfg = tiny_config(tiny_model_dir, synthetic_csv)
    lines = []
    plan = plan_time_budget(cfg, 3600, time.time(), log=lines.append)
    # 600 rows, 120 for validation: an hour holds all 480 others
    assert plan.rows == 480 == plan.cfg.data.max_train_samples and len(lines) == 1
    assert "-> 480 training rows (of 480)" in lines[0]
    capped = plan_time_budget(tiny_config(tiny_model_dir, synthetic_csv, "data.max_train_samples=200"), 3600,
                              time.time(), log=lines.append)
    assert capped.rows == 200  # the cap: all its rows fit
    metrics = train(plan.cfg, tmp_path / "run", log=lambda message: None)
    config = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert config["data"]["max_train_samples"] == 480 == metrics["train_rows"]


def test_cli_train_refuses_a_budget_too_short_in_one_line_and_writes_nothing(tmp_path, tiny_model_dir,
                                                                             synthetic_csv, capsys):
    out = tmp_path / "run"
    code = main(["train", "--out", str(out), "--time-budget", "0.5",
                 *[f"--set={s}" for s in (f"model.name={tiny_model_dir}", f"data.train={synthetic_csv}", *TINY_TRAIN)],
                 "--recipe", "r6-qkv-a24"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "time budget 0.5 s is too short" in err[0]
    assert "too short on this machine" in err[0] and "give at least" in err[0]
    assert not out.exists()


@pytest.mark.parametrize("extra, says", [
    (["--set", "train.max_steps=5"], "train.max_steps"),
    (["--time-budget", "0"], "seconds above 0"),
    (["--resume"], "drop --recipe/--set/--time-budget"),
])
def test_cli_train_refuses_what_a_budget_cannot_size(tmp_path, tiny_model_dir, synthetic_csv, capsys, extra, says):
    out = tmp_path / "run"
    args = ["train", "--out", str(out), "--recipe", "r6-qkv-a24",
            *[f"--set={s}" for s in (f"model.name={tiny_model_dir}", f"data.train={synthetic_csv}", *TINY_TRAIN)],
            *(["--time-budget", "60"] if "--time-budget" not in extra else []), *extra]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0] and not out.exists()


def test_cli_train_refuses_an_existing_run_before_measuring(tmp_path, tiny_model_dir, synthetic_csv, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    code = main(["train", "--out", str(out), "--recipe", "r6-qkv-a24", "--time-budget", "600",
                 *[f"--set={s}" for s in (f"model.name={tiny_model_dir}", f"data.train={synthetic_csv}", *TINY_TRAIN)]])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "already exists" in err[0]
    assert (out / "notes.txt").read_text() == "mine" and sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_a_step_slowed_by_something_else_does_not_set_the_rate():
    from budgetlora.training.time_budget import seconds_per_token

    # step starts (and the end of the last) at 0, 10, 11, 12, 15, 16, 17 s; 100 tokens each. The
    # first step is a warm-up; of the others one took 3 s (another process ran): the rate is 1 s
    marks = [0.0, 10.0, 11.0, 12.0, 15.0, 16.0, 17.0]
    assert seconds_per_token(marks, [100] * 6) == pytest.approx(0.01)
    # a step of twice the tokens may take twice the time
    assert seconds_per_token([0.0, 10.0, 12.0, 13.0], [50, 200, 100]) == pytest.approx(0.01)
