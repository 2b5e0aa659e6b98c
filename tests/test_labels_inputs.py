"""Issue 12, items 2, 6 and 8: label mistakes, a too-long model.max_length and small input
messages are refused (or warned about) in one line instead of giving a silently wrong run."""

import json

import pandas as pd
import pytest

from budgetlora.cli import main
from budgetlora.config import DataConfig
from budgetlora.data import TextTable, encode_labels, read_table
from budgetlora.errors import UserError

from .conftest import ROBERTA_BASE, TINY_TRAIN, synthetic_frame

QUICK = [*TINY_TRAIN, "train.max_steps=4", "train.eval_every=4"]  # enough to finish a run, not to learn


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def _train_args(model_dir, data, out, *extra):
    args = ["train", "--out", str(out)]
    for override in [f"model.name={model_dir}", f"data.train={data}", *QUICK, *extra]:
        args += ["--set", override]
    return args


def _csv(tmp_path, labels, name="train.csv"):
    """A small synthetic training file whose label column holds `labels` (cycled over the rows)."""
    frame = synthetic_frame(n=80)
    frame["label"] = [labels[i % len(labels)] for i in range(len(frame))]
    path = tmp_path / name
    frame.to_csv(path, index=False)
    return path


def _mixed_frame():
    """Labels as names, every third row written as its class number instead (index in NAMES)."""
    frame = synthetic_frame(n=80)
    names = sorted(set(frame.label))
    frame["true"] = frame.label
    frame["label"] = [str(names.index(v)) if i % 3 == 0 else v for i, v in enumerate(frame.label)]
    return frame, names


# ---------------------------------------------------------------- item 2: labels


def test_digit_strings_are_class_numbers_against_known_names():
    names = ["World", "Sports", "Business", "Sci/Tech"]
    table = TextTable(["a", "b", "c", "d"], ["World", "0", "3", "Sports"], None, None, "x")
    assert encode_labels(table, names).tolist() == [0, 0, 3, 1]


def test_mixed_names_and_numbers_without_label_names_is_refused(tiny_model_dir, tmp_path, capsys):
    frame, _ = _mixed_frame()
    data = tmp_path / "mixed.csv"
    frame[["text", "label"]].to_csv(data, index=False)
    out = tmp_path / "run"
    assert main(_train_args(tiny_model_dir, data, out)) == 2
    message = _one_line_error(capsys)
    assert "mixes class names" in message and "data.label_names" in message
    assert not out.exists()


def test_mixed_names_and_numbers_with_label_names_map_consistently(tiny_model_dir, tmp_path, capsys):
    frame, names = _mixed_frame()
    data = tmp_path / "mixed.csv"
    frame[["text", "label"]].to_csv(data, index=False)
    out = tmp_path / "run"
    assert main(_train_args(tiny_model_dir, data, out, f"data.label_names=[{','.join(names)}]")) == 0
    assert json.loads((out / "labels.json").read_text()) == names
    val = pd.read_csv(out / "val_predictions.csv")
    truth = dict(zip(frame.text, frame.true))
    assert [truth[t] for t in val.text] == val.true.tolist()  # "2" became names[2], not a class of its own


def test_evaluate_reads_class_numbers_as_the_runs_classes(trained_run, tmp_path):
    from budgetlora.evaluation.metrics import evaluate_run

    out, _ = trained_run
    names = json.loads((out / "labels.json").read_text())
    frame = synthetic_frame(n=40, seed=5)
    by_name, by_number = tmp_path / "names.csv", tmp_path / "mixed.csv"
    frame.to_csv(by_name, index=False)
    frame.assign(label=[str(names.index(v)) if i % 2 else v for i, v in enumerate(frame.label)]).to_csv(
        by_number, index=False)
    assert evaluate_run(out, str(by_number))["accuracy"] == evaluate_run(out, str(by_name))["accuracy"]


def test_one_based_integer_labels_are_refused(tiny_model_dir, tmp_path, capsys):
    data = _csv(tmp_path, [1, 2, 3, 4])
    out = tmp_path / "run"
    assert main(_train_args(tiny_model_dir, data, out)) == 2
    message = _one_line_error(capsys)
    assert "class 0" in message and "0..3" in message and "data.label_names" in message
    assert not out.exists()


def test_one_based_integer_labels_train_when_named(tiny_model_dir, tmp_path, capsys):
    data = _csv(tmp_path, [1, 2, 3, 4])
    out = tmp_path / "run"
    assert main(_train_args(tiny_model_dir, data, out, "data.label_names=[1,2,3,4]")) == 0
    assert json.loads((out / "labels.json").read_text()) == ["1", "2", "3", "4"]
    assert sorted(set(pd.read_csv(out / "val_predictions.csv").true)) == [1, 2, 3, 4]
    table = TextTable(["a"], [0], None, None, "eval.csv")  # 0 is no name of this run
    with pytest.raises(UserError, match="unknown label 0"):
        encode_labels(table, ["1", "2", "3", "4"])


def test_declared_class_without_training_rows_is_warned(tiny_model_dir, tmp_path):
    from budgetlora.training.loop import train

    from .conftest import tiny_config

    data = _csv(tmp_path, ["sports", "money", "tech"])
    cfg = tiny_config(tiny_model_dir, data, *QUICK[len(TINY_TRAIN):], "data.label_names=[sports,money,tech,world]")
    lines = []
    train(cfg, tmp_path / "run", log=lines.append)
    warned = [line for line in lines if "world" in line and "no training rows" in line]
    assert len(warned) == 1 and "\n" not in warned[0]


@pytest.mark.parametrize("labels, extra", [([2], []), (["sports"], ["data.label_names=[sports,money,tech,world]"])])
def test_a_single_class_is_refused(labels, extra, tiny_model_dir, tmp_path, capsys):
    data = _csv(tmp_path, labels)
    out = tmp_path / "run"
    assert main(_train_args(tiny_model_dir, data, out, *extra)) == 2
    assert "single class" in _one_line_error(capsys)
    assert not out.exists()


# ---------------------------------------------------------------- item 6: model.max_length


def test_max_length_beyond_the_position_embeddings_is_refused_before_writing(tiny_model_dir, synthetic_csv, tmp_path,
                                                                             capsys):
    out = tmp_path / "run"
    assert main(_train_args(tiny_model_dir, synthetic_csv, out, "model.max_length=200")) == 2
    message = _one_line_error(capsys)
    assert "model.max_length=200 exceeds" in message and "(128 positions)" in message
    assert "model.max_length<=128" in message
    assert not out.exists()


def test_position_limits_of_roberta_and_bert(tmp_path):
    from transformers import BertConfig

    from budgetlora.adapters.model import max_input_length

    BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
               max_position_embeddings=64).save_pretrained(str(tmp_path))
    assert max_input_length(str(ROBERTA_BASE)) == 512  # 514 positions, ids start after padding_idx=1
    assert max_input_length(str(tmp_path)) == 64


def test_params_refuses_a_too_long_max_length(capsys):
    assert main(["params", "--model", str(ROBERTA_BASE), "--recipe", "r6-qkv-a24", "--set", "model.max_length=600"]) == 2
    message = _one_line_error(capsys)
    assert "model.max_length=600 exceeds" in message and "(512 positions)" in message


# ---------------------------------------------------------------- item 8: small messages


def test_a_directory_is_not_reported_missing(tmp_path):
    (tmp_path / "train.csv").write_text("text,label\na,0\n")
    with pytest.raises(UserError) as err:
        read_table(str(tmp_path), DataConfig())
    message = str(err.value)
    assert "is a directory" in message and "train.csv" in message and "\n" not in message


def test_malformed_json_lines_name_the_line(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text('{"text": "a", "label": 0}\n{"text": "b", "label": 1}\n{"text": "c", "label": 0\n'
                    '{"text": "d", "label": 1}\n')
    with pytest.raises(UserError) as err:
        read_table(str(path), DataConfig())
    message = str(err.value)
    assert "line 3" in message and "position" not in message and "\n" not in message


def test_predict_takes_data_overrides(trained_run, tmp_path, capsys):
    out, _ = trained_run
    data = tmp_path / "body.csv"
    pd.DataFrame({"body": ["the coach of team in league", "bank said profit on shares"]}).to_csv(data, index=False)
    preds = tmp_path / "preds.csv"
    assert main(["predict", str(out), "--data", str(data), "--out", str(preds)]) == 2
    assert "--set data.text_column=NAME" in _one_line_error(capsys)
    assert main(["predict", str(out), "--data", str(data), "--out", str(preds), "--set", "data.text_column=body"]) == 0
    assert len(pd.read_csv(preds)) == 2


@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_only_data_settings_can_change_after_training(command, trained_run, synthetic_test_csv, tmp_path, capsys):
    out, _ = trained_run
    args = [command, str(out), "--data", str(synthetic_test_csv), "--set", "model.max_length=16"]
    if command == "predict":
        args += ["--out", str(tmp_path / "p.csv")]
    assert main(args) == 2
    message = _one_line_error(capsys)
    assert "model.max_length" in message and "only data.* settings" in message
    assert not (tmp_path / "p.csv").exists()
