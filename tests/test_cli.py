"""The command line end to end: params, evaluate, predict, reload with plain PEFT, bad input."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from budgetlora.cli import main

from .conftest import ROBERTA_BASE, TINY_TRAIN, run_cli


def test_params_json_from_config_alone(capsys):
    assert main(["params", "--model", str(ROBERTA_BASE), "--recipe", "r7-qkv-a77", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["trainable"] == 980_740 and out["head"] == 593_668 and out["over_budget_by"] == 0


def test_params_over_budget_prints_breakdown_then_fails(capsys):
    assert main(["params", "--model", str(ROBERTA_BASE), "--recipe", "r6-qkv-a24", "--set", "adapter.r=8"]) == 2
    captured = capsys.readouterr()
    assert "OVER by 36,036" in captured.out
    assert captured.err.count("\n") == 1 and "over budget" in captured.err


def test_plain_peft_reload_gives_the_same_logits_as_predict(trained_run, tiny_model_dir, synthetic_test_csv, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out, _ = trained_run
    preds = tmp_path / "preds.csv"
    assert main(["predict", str(out), "--data", str(synthetic_test_csv), "--out", str(preds), "--probs", "--label-names"]) == 0
    frame = pd.read_csv(preds)

    base = AutoModelForSequenceClassification.from_pretrained(str(tiny_model_dir), num_labels=4)
    model = PeftModel.from_pretrained(base, str(out / "adapter")).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(out / "adapter"))
    texts = pd.read_csv(synthetic_test_csv).text.tolist()
    with torch.inference_mode():
        batch = tokenizer(texts, padding=True, truncation=True, max_length=32, return_tensors="pt")
        probs = torch.softmax(model(**batch).logits, dim=-1).numpy()
    names = json.loads((out / "labels.json").read_text())
    ours = frame[[f"prob_{n}" for n in names]].to_numpy()
    np.testing.assert_allclose(ours, probs, atol=1e-5)
    assert (frame.Label.to_numpy() == probs.argmax(1)).all()
    assert list(frame.columns[:3]) == ["ID", "Label", "LabelName"]
    assert frame.ID.tolist() == [f"row-{i}" for i in range(len(frame))]  # from the id column


def test_predict_without_ids_uses_row_order_and_kaggle_columns(trained_run, tmp_path):
    out, _ = trained_run
    data = tmp_path / "unlabelled.jsonl"
    pd.DataFrame({"text": ["the coach of team in league", "bank said profit on shares"]}).to_json(data, orient="records", lines=True)
    preds = tmp_path / "submission.csv"
    assert main(["predict", str(out), "--data", str(data), "--out", str(preds)]) == 0
    frame = pd.read_csv(preds)
    assert list(frame.columns) == ["ID", "Label"] and frame.ID.tolist() == [0, 1]
    names = json.loads((out / "labels.json").read_text())
    assert [names[i] for i in frame.Label] == ["sports", "money"]


def test_evaluate_json_matches_training_test_metrics(trained_run, synthetic_test_csv, capsys):
    out, metrics = trained_run
    assert main(["evaluate", str(out), "--data", str(synthetic_test_csv), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["accuracy"] == pytest.approx(metrics["test"]["accuracy"])
    assert result["macro_f1"] == pytest.approx(metrics["test"]["macro_f1"])
    low, high = result["accuracy_ci95"]
    assert low <= result["accuracy"] <= high
    assert np.array(result["confusion_matrix"]).sum() == result["n"] == 120


# ---------------------------------------------------------------- bad input


def _one_line_error(capsys):
    err = capsys.readouterr().err
    assert err.startswith("budgetlora: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    return err


@pytest.fixture
def bad_files(tmp_path):
    files = {}
    files["missing"] = tmp_path / "nope.csv"
    (tmp_path / "data.xyz").write_text("text,label\na,0\n")
    files["format"] = tmp_path / "data.xyz"
    pd.DataFrame({"body": ["a b"] * 8, "label": [0, 1] * 4}).to_csv(tmp_path / "nocol.csv", index=False)
    files["column"] = tmp_path / "nocol.csv"
    pd.DataFrame({"text": ["a b", ""] * 4, "label": [0, 1] * 4}).to_csv(tmp_path / "empty.csv", index=False)
    files["empty"] = tmp_path / "empty.csv"
    (tmp_path / "latin1.csv").write_bytes("text,label\ncaf\xe9 news,0\nteam,1\n".encode("latin-1"))
    files["encoding"] = tmp_path / "latin1.csv"
    return files


@pytest.mark.parametrize(
    "case, extra, message",
    [
        ("missing", [], "does not exist"),
        ("format", [], "unknown file format"),
        ("column", [], "text column 'text'"),
        ("empty", [], "empty"),
        ("encoding", [], "not UTF-8"),
        (None, ["budget.max_trainable=1000"], "over budget"),
        (None, ["adapter.targets=q_proj"], "matches no"),
        (None, ["model.name=/no/such/model"], "cannot load model"),
        (None, ["train.lr=fast"], "train.lr"),
    ],
)
def test_train_bad_input_is_one_line_exit_2_and_writes_nothing(
    case, extra, message, bad_files, tiny_model_dir, synthetic_csv, tmp_path, capsys
):
    data = bad_files[case] if case else synthetic_csv
    out = tmp_path / "run"
    args = ["train", "--out", str(out), "--set", f"model.name={tiny_model_dir}", "--set", f"data.train={data}"]
    for override in [*TINY_TRAIN, *extra]:
        args += ["--set", override]
    assert main(args) == 2
    assert message in _one_line_error(capsys)
    assert not out.exists()


def test_unknown_label_at_evaluation(trained_run, tmp_path, capsys):
    out, _ = trained_run
    data = tmp_path / "odd.csv"
    pd.DataFrame({"text": ["a b", "c d"], "label": ["sports", "politics"]}).to_csv(data, index=False)
    assert main(["evaluate", str(out), "--data", str(data)]) == 2
    assert "unknown label 'politics'" in _one_line_error(capsys)


def test_existing_predictions_are_not_overwritten(trained_run, synthetic_test_csv, tmp_path, capsys):
    out, _ = trained_run
    preds = tmp_path / "preds.csv"
    preds.write_text("precious\n")
    assert main(["predict", str(out), "--data", str(synthetic_test_csv), "--out", str(preds)]) == 2
    assert "--overwrite" in _one_line_error(capsys)
    assert preds.read_text() == "precious\n"


def test_pickle_refused_without_trust(trained_run, tmp_path, capsys):
    out, _ = trained_run
    data = tmp_path / "test.pkl"
    pd.DataFrame({"text": ["team wins"]}).to_pickle(data)
    assert main(["predict", str(out), "--data", str(data), "--out", str(tmp_path / "p.csv")]) == 2
    assert "--trust-pickle" in _one_line_error(capsys)
    assert main(["predict", str(out), "--data", str(data), "--out", str(tmp_path / "p.csv"), "--trust-pickle"]) == 0


def test_real_process_exit_status_and_no_traceback(tmp_path):
    result = run_cli("train", "--out", tmp_path / "run", "--set", f"data.train={tmp_path / 'missing.csv'}")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "does not exist" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "run").exists()


def _subcommands(parser, path=("budgetlora",)):
    """(command path, parser) for every command and subcommand."""
    import argparse

    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _subcommands(sub, (*path, name))


def test_shared_flags_mean_the_same_in_every_command():
    from budgetlora.cli import build_parser

    helps = {}
    for path, parser in _subcommands(build_parser()):
        for action in parser._actions:
            for flag in set(action.option_strings) & {"--trust-pickle", "--json", "--overwrite", "--set"}:
                helps.setdefault(flag, {})[" ".join(path[1:])] = (action.help, action.dest, action.default)
    assert set(helps["--trust-pickle"]) == {"train", "probe", "evaluate", "predict", "data inspect", "data shift",
                                            "augment synonyms", "augment generate"}
    assert len(set(helps["--trust-pickle"].values())) == len(set(helps["--json"].values())) == 1
    assert all(h.startswith("replace an existing ") and d is False for h, _, d in helps["--overwrite"].values())
    assert all(dest == "overrides" and default == [] for _, dest, default in helps["--set"].values())


def test_first_line_of_an_error_fits_a_one_line_message():
    from budgetlora.errors import first_line

    assert first_line(ValueError("  bad value\nTraceback detail")) == "bad value"
    assert first_line(KeyError()) == "KeyError"
    assert first_line(OSError("x" * 300)) == "x" * 200 and first_line(OSError("x" * 300), limit=None) == "x" * 300
