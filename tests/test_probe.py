"""The linear probe (baseline, `budgetlora probe`) and LP-FT (head.init=probe)."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from budgetlora import rundir
from budgetlora.config import load_config
from budgetlora.errors import UserError
from budgetlora.training.loop import train

from .conftest import run_cli, synthetic_frame, tiny_config

quiet = dict(log=lambda message: None)


# ---------------------------------------------------------------- the probe itself


def test_fit_is_deterministic_and_separates_blobs():
    from budgetlora.training.probe import fit_probe

    rng = np.random.default_rng(0)
    y = np.arange(400) % 4
    x = rng.normal(size=(400, 16)).astype(np.float32) + 3 * np.eye(4, 16)[y]
    a, b = fit_probe(x, y, 4), fit_probe(x, y, 4)
    assert np.array_equal(a.coef, b.coef) and a.C == b.C
    assert (a.logits(x).argmax(1) == y).mean() > 0.95 and a.cv_accuracy > 0.9
    two = fit_probe(x[y < 2], y[y < 2], 3)  # a class without rows: far below the others
    assert two.coef.shape == (3, 16) and (two.logits(x[y < 2]).argmax(1) == y[y < 2]).mean() > 0.95


def test_c_walk_stops_at_the_first_worse_c_and_picks_what_the_full_grid_picks(monkeypatch):
    from sklearn.linear_model import LogisticRegression

    from budgetlora.training.probe import C_GRID, fit_probe

    rng = np.random.default_rng(1)
    y = np.arange(600) % 4
    x = rng.normal(size=(600, 64)).astype(np.float32) + 0.6 * np.eye(4, 64)[y]  # noisy: a middle C wins
    seen = []
    fit = LogisticRegression.fit

    def counting_fit(self, X, y, *a, **k):
        seen.append(self.C)
        return fit(self, X, y, *a, **k)

    monkeypatch.setattr(LogisticRegression, "fit", counting_fit)
    walked = fit_probe(x, y, 4)
    tried = sorted(set(seen))
    assert max(tried) < max(C_GRID)  # stopped before the costliest C
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    z = (x - x.mean(0)) / x.std(0)
    scores = [cross_val_score(LogisticRegression(C=c, max_iter=2000, tol=1e-4), z, y,
                              cv=StratifiedKFold(3, shuffle=False)).mean() for c in C_GRID]
    assert walked.C == C_GRID[int(np.argmax(scores))] and min(C_GRID) < walked.C  # the full grid's pick, inside it


def test_bf16_features_match_fp32_and_are_cached_apart(tiny_model_dir):
    from budgetlora.training.probe import FrozenEncoder

    rng = np.random.default_rng(0)
    ids = [rng.integers(5, 100, size=n) for n in (5, 9, 17, 12)]
    fp32 = FrozenEncoder(str(tiny_model_dir), 1, "mean", precision="fp32")
    bf16 = FrozenEncoder(str(tiny_model_dir), 1, "mean", precision="bf16")
    a, b = fp32.features(ids), bf16.features(ids)
    assert fp32.precision == "fp32" and bf16.precision == "bf16" and b.dtype == np.float32
    assert not bf16.cache_hits  # a cached fp32 result is not handed out as bf16
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cosine.min() > 0.99 and not np.array_equal(a, b)


def test_pooling_is_read_from_a_sentence_transformers_folder(tmp_path, tiny_model_dir):
    from budgetlora.training.probe import detect_pooling

    assert detect_pooling(str(tiny_model_dir))[0] == "first"  # no modules.json: what the head reads
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True}))
    assert detect_pooling(str(tmp_path))[0] == "mean"
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True}))
    assert detect_pooling(str(tmp_path))[0] == "first"


def test_probe_beats_chance_on_separable_rows_and_caches_its_features(tiny_model_dir, synthetic_csv, tmp_path):
    from budgetlora.training.probe import PROBE_FILE, PROBE_WEIGHTS, feature_cache_dir, linear_probe, load_fit

    cfg = tiny_config(tiny_model_dir, synthetic_csv)
    first = linear_probe(cfg, tmp_path / "probe", **quiet)
    assert first["val"]["accuracy"] > 0.8 and first["adapter_parameters"] == 0 and first["pooling"] == "first"
    assert list(feature_cache_dir().glob("*.npy")) and not first["features_cached"]
    again = linear_probe(cfg, **quiet)
    assert again["features_cached"] and again["val"]["accuracy"] == first["val"]["accuracy"]
    assert again["feature_seconds"] < first["feature_seconds"]
    saved = json.loads((tmp_path / "probe" / PROBE_FILE).read_text())
    fit, extra = load_fit(tmp_path / "probe" / PROBE_WEIGHTS)
    assert saved["C"] == fit.C and extra["pooling"] == "first" and fit.coef.shape == (4, 64)
    with pytest.raises(UserError, match="already exists"):
        linear_probe(cfg, tmp_path / "probe", **quiet)


# ---------------------------------------------------------------- LP-FT


def _rows(cfg):
    from budgetlora.adapters.model import load_tokenizer
    from budgetlora.data import tokenize

    frame = synthetic_frame()
    names = sorted(set(frame["label"]))
    y = np.array([names.index(v) for v in frame["label"]])
    tokenizer = load_tokenizer(cfg.model.name)
    ids = tokenize(list(frame["text"]), tokenizer, cfg.model.max_length)
    return names, ids[:480], y[:480], ids[480:], y[480:], tokenizer.pad_token_id


@pytest.mark.parametrize("head", ["standard", "standard_lora", "linear", "mean"])
def test_probe_init_head_beats_chance_before_any_step_with_the_same_trainable_count(tiny_model_dir, synthetic_csv,
                                                                                    head):
    from budgetlora.adapters import budget
    from budgetlora.adapters.model import build_model
    from budgetlora.evaluation.metrics import compute_logits
    from budgetlora.training.probe import init_head

    cfg = tiny_config(tiny_model_dir, synthetic_csv, f"head.type={head}")
    names, train_ids, y_train, val_ids, y_val, pad = _rows(cfg)
    random_model, probed = build_model(cfg, names), build_model(cfg, names)
    info = init_head(probed, train_ids, y_train, pad, model_name=cfg.model.name)
    accuracy = {name: (compute_logits(m, val_ids, 64, pad).argmax(1) == y_val).mean()
                for name, m in (("random", random_model), ("probe", probed))}
    assert accuracy["probe"] > 0.8 > 0.5 > accuracy["random"], accuracy
    assert budget.count(probed, 10**9).trainable == budget.count(random_model, 10**9).trainable
    assert info["rows"] == 480 and info["layer"].startswith("classifier")


def test_config_refuses_bad_values_in_one_line():
    for key, value in (("head.init", "zeros"), ("train.baseline", "knn")):
        with pytest.raises(UserError) as e:
            load_config("minilm-quickstart", [f"{key}={value}"])
        assert str(e.value).count("\n") == 0 and key in str(e.value) and "choose one of" in str(e.value)
    assert load_config("minilm-quickstart").train.baseline == "probe"
    assert load_config("default").head.init == "random" and load_config("default").train.baseline == "none"


def test_lpft_with_a_baseline_fits_one_probe_for_both_in_one_feature_pass(tiny_model_dir, synthetic_csv, tmp_path,
                                                                          monkeypatch):
    """head.init=probe + train.baseline=probe with a head that pools as the baseline (linear: the
    first token, what a plain folder's baseline pools): the frozen features of the training rows
    are computed once and the head starts as the baseline's probe, which it reproduces."""
    from budgetlora.training import probe

    def no_second_pass(*args, **kwargs):
        raise AssertionError("LP-FT computed its own features beside the baseline's")

    monkeypatch.setattr(probe, "head_features", no_second_pass)
    passes = []
    pooled = probe._pooled

    def counting(encoder, token_ids, *args, **kwargs):
        passes.append(len(token_ids))
        return pooled(encoder, token_ids, *args, **kwargs)

    monkeypatch.setattr(probe, "_pooled", counting)
    monkeypatch.setenv("BUDGETLORA_CACHE", str(tmp_path / "cache"))
    cfg = tiny_config(tiny_model_dir, synthetic_csv, "head.type=linear", "head.init=probe", "train.baseline=probe",
                      "train.precision=fp32", "train.max_steps=1", "train.lr=1e-6")
    m = train(cfg, tmp_path / "run", **quiet)
    init, base = m["head_init"], m["baseline"]
    assert passes == [m["train_rows"], m["val_rows"]]  # training rows once, validation rows once
    assert (init["C"], init["cv_accuracy"], init["train_accuracy"], init["rows"]) == \
        (base["C"], base["cv_accuracy"], base["train_accuracy"], base["train_rows"])
    assert init["val_accuracy"] == base["val"]["accuracy"] > 0.8


@pytest.mark.parametrize("head", ["linear", "mean"])
def test_a_head_initialised_from_the_baseline_gives_the_baseline_probes_logits(tiny_model_dir, synthetic_csv, head):
    from budgetlora.adapters.model import build_model
    from budgetlora.evaluation.metrics import compute_logits
    from budgetlora.training.probe import HEAD_POOLING, fit_baseline, head_init_from_baseline

    cfg = tiny_config(tiny_model_dir, synthetic_csv, f"head.type={head}")
    names, train_ids, y_train, val_ids, y_val, pad = _rows(cfg)
    fitted = fit_baseline(cfg.model.name, pad, len(names), (train_ids, y_train), pooling=HEAD_POOLING[head],
                          precision="fp32")
    model = build_model(cfg, names)
    info = head_init_from_baseline(model, fitted)
    expected = fitted.fit.logits(fitted.encoder.features(val_ids))
    assert np.allclose(compute_logits(model, val_ids, 64, pad), expected, rtol=1e-4, atol=1e-3)  # fp32 rounding
    assert info["rows"] == 480 and (expected.argmax(1) == y_val).mean() > 0.8


@pytest.mark.slow
def test_lpft_run_reports_its_head_and_baseline_and_resumes_to_the_same_weights(tiny_model_dir, synthetic_csv,
                                                                               tmp_path, monkeypatch):
    from budgetlora.training import probe

    cfg = tiny_config(tiny_model_dir, synthetic_csv, "head.init=probe", "train.baseline=probe", "train.epochs=2",
                      "train.eval_every=20", "train.lr=1e-3", "train.report=true")
    full = train(cfg, tmp_path / "full", **quiet)
    assert full["head_init"]["val_accuracy"] > 0.8 and full["baseline"]["val"]["accuracy"] > 0.8
    assert full["baseline"]["adapter_parameters"] == 0
    report = (tmp_path / "full" / "report.md").read_text()
    assert "linear-probe baseline" in report and "fine-tuning bought" in report and "LP-FT" in report
    random = train(load_config(tmp_path / "full" / "config.yaml", ["head.init=random", "train.baseline=none",
                                                                    "train.max_steps=1"]), tmp_path / "random", **quiet)
    assert random["trainable_params"] == full["trainable_params"] and "head_init" not in random

    real_save = rundir.save_checkpoint

    def save_then_die(out, state, progress):
        real_save(out, state, progress)
        if state["step"] == 40:
            raise KeyboardInterrupt

    monkeypatch.setattr(rundir, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "killed", **quiet)
    monkeypatch.setattr(rundir, "save_checkpoint", real_save)

    def no_refit(*args, **kwargs):
        raise AssertionError("a resumed run refitted its head")

    monkeypatch.setattr(probe, "init_head", no_refit)
    resumed = train(None, tmp_path / "killed", resume=True, **quiet)
    fitted = ("layer", "C", "cv_accuracy", "train_accuracy", "val_accuracy", "rows")  # not seconds, cache hits
    assert resumed["val"]["loss"] == full["val"]["loss"]
    assert {k: resumed["head_init"][k] for k in fitted} == {k: full["head_init"][k] for k in fitted}
    wa = load_file(tmp_path / "full" / "adapter" / "adapter_model.safetensors")
    wb = load_file(tmp_path / "killed" / "adapter" / "adapter_model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.slow
def test_probe_command_line(tiny_model_dir, synthetic_csv, tmp_path):
    result = run_cli("probe", "--recipe", "r6-qkv-a24", "--set", f"model.name={tiny_model_dir}", "--set",
                     f"data.train={synthetic_csv}", "--set", "model.max_length=32", "--out", tmp_path / "p", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["val"]["accuracy"] > 0.8 and (tmp_path / "p" / "probe.json").is_file()
