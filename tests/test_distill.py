"""Knowledge distillation: the loss, teacher logits (runs and plain classifier folders), the cache, training."""

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from budgetlora.errors import UserError

from .conftest import synthetic_frame, tiny_config


def test_distill_loss_matches_its_formula():
    from budgetlora.training.distill import distill_loss

    torch.manual_seed(0)
    student, teacher = torch.randn(5, 4), torch.randn(5, 4)
    labels = torch.tensor([0, 1, 2, 3, 0])
    ce = F.cross_entropy(student, labels, reduction="sum")
    assert distill_loss(student, labels, teacher, 2.0, 0.0) == pytest.approx(ce.item(), rel=1e-6)
    p_t = torch.softmax(teacher / 2, -1)
    kl = (p_t * (torch.log(p_t) - torch.log_softmax(student / 2, -1))).sum()
    assert distill_loss(student, labels, teacher, 2.0, 1.0) == pytest.approx(4 * kl.item(), rel=1e-5)
    assert distill_loss(student, labels, teacher, 2.0, 0.25) == pytest.approx(0.25 * 4 * kl.item() + 0.75 * ce.item(), rel=1e-5)
    assert distill_loss(teacher, labels, teacher, 3.0, 1.0).item() == pytest.approx(0.0, abs=1e-6)
    smoothed = torch.nn.functional.cross_entropy(student, labels, reduction="sum", label_smoothing=0.2)
    assert distill_loss(student, labels, teacher, 2.0, 0.0, label_smoothing=0.2) == pytest.approx(smoothed.item(), rel=1e-6)
    assert smoothed.item() != pytest.approx(ce.item(), rel=1e-3)


def test_teacher_columns_follow_the_class_names():
    from budgetlora.training.distill import teacher_columns

    assert teacher_columns(["b", "a", "c"], ["a", "b", "c"], "t") == [1, 0, 2]
    assert teacher_columns(["LABEL_0", "LABEL_1"], ["neg", "pos"], "t") == [0, 1]
    with pytest.raises(UserError, match="same classes"):
        teacher_columns(["x", "y"], ["neg", "pos"], "t")


def test_teacher_logits_of_a_run_are_cached(trained_run, synthetic_test_csv, monkeypatch):
    import budgetlora.training.distill as distill
    from budgetlora.evaluation.metrics import evaluate_run

    run_dir, _ = trained_run
    texts = pd.read_csv(synthetic_test_csv)["text"].tolist()
    names = ["money", "sports", "tech", "world"]
    first = distill.teacher_logits(str(run_dir), texts, names, log=lambda m: None)
    assert first.shape == (len(texts), 4)
    # the teacher's logits are the run's: its accuracy on these labelled rows is reproduced
    labels = pd.read_csv(synthetic_test_csv)["label"].map(names.index).to_numpy()
    assert (first.argmax(1) == labels).mean() == pytest.approx(evaluate_run(run_dir, str(synthetic_test_csv))["accuracy"])

    def no_teacher(*args, **kwargs):
        raise AssertionError("the teacher ran again instead of reading the cache")

    monkeypatch.setattr(distill, "load_teacher", no_teacher)
    again = distill.teacher_logits(str(run_dir), texts, names, log=lambda m: None)
    np.testing.assert_array_equal(first, again)
    with pytest.raises(AssertionError):  # other texts are another cache entry
        distill.teacher_logits(str(run_dir), texts[:-1], names, log=lambda m: None)


def test_teacher_can_be_a_plain_classifier_folder(tmp_path, tiny_model_dir):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from budgetlora.training.distill import teacher_logits

    torch.manual_seed(1)
    model = AutoModelForSequenceClassification.from_pretrained(str(tiny_model_dir), num_labels=2)
    model.save_pretrained(str(tmp_path / "teacher"))
    AutoTokenizer.from_pretrained(str(tiny_model_dir)).save_pretrained(str(tmp_path / "teacher"))
    texts = ["a goal for the team", "the market fell"]
    got = teacher_logits(str(tmp_path / "teacher"), texts, ["neg", "pos"], max_length=32, log=lambda m: None)
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "teacher"))
    model.eval()
    with torch.no_grad():
        want = torch.cat([model(**tok(t, return_tensors="pt")).logits for t in texts]).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)
    with pytest.raises(UserError, match="cannot load teacher"):
        teacher_logits(str(tmp_path / "missing"), texts, ["neg", "pos"], log=lambda m: None)


def test_student_learns_the_teacher_not_the_labels(tmp_path, trained_run, tiny_model_dir, synthetic_test_csv):
    """With weight=1 the labels are ignored: a student given random labels still agrees with the teacher."""
    from budgetlora import train
    from budgetlora.training.distill import teacher_logits
    from budgetlora.evaluation.metrics import evaluate_run

    run_dir, _ = trained_run
    frame = synthetic_frame(n=400, seed=8)
    frame["label"] = np.random.default_rng(0).permutation(frame["label"].to_numpy())  # labels now say nothing
    frame.to_csv(tmp_path / "noisy.csv", index=False)
    messages = []
    cfg = tiny_config(tiny_model_dir, tmp_path / "noisy.csv", f"distill.teacher={run_dir}", "distill.weight=1.0",
                      "distill.temperature=2", "train.max_steps=100", "train.eval_every=100")
    train(cfg, tmp_path / "student", log=messages.append)
    assert any("computing teacher logits" in m for m in messages)

    # agreement with the teacher on held-out rows, and accuracy on their true labels
    test = pd.read_csv(synthetic_test_csv)
    names = ["money", "sports", "tech", "world"]
    teacher_pred = teacher_logits(str(run_dir), test["text"].tolist(), names, log=lambda m: None).argmax(1)
    from budgetlora.evaluation.predict import predict_file

    student = predict_file(tmp_path / "student", str(synthetic_test_csv), tmp_path / "p.csv", label_names_column=True)
    student_pred = student["LabelName"].map(names.index).to_numpy()
    assert (student_pred == teacher_pred).mean() >= 0.7  # random labels alone give ~0.25 (0.775-0.8+ by thread count)
    # random labels alone give ~0.25; with the teacher 0.725-0.8 on 120 rows, by CPU and thread count (0.75 was
    # one row off the edge: 0.725 on a Zen 3 with 2 threads, at 20c66f2 too)
    assert evaluate_run(tmp_path / "student", str(synthetic_test_csv))["accuracy"] >= 0.6

    # the second run with the same teacher and rows reads the cached logits
    messages.clear()
    cfg.train.max_steps = cfg.train.eval_every = 1
    train(cfg, tmp_path / "student2", log=messages.append)
    assert any("read from the cache" in m for m in messages)
