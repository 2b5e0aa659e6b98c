"""deploy.predictor: a run folder loads behind the Predictor face with the logits of budgetlora's
own evaluation, and bad paths / backends are one clear line."""

import numpy as np
import pandas as pd
import pytest

from budgetlora.adapters.model import load_run
from budgetlora.deploy.predictor import TextTooLong, load_predictor
from budgetlora.errors import UserError
from budgetlora.evaluation.metrics import table_logits


def test_a_run_loads_as_a_torch_predictor_with_the_runs_own_logits(trained_run, synthetic_test_csv):
    from budgetlora.data import read_table

    run_dir, _ = trained_run
    predictor = load_predictor(run_dir)
    assert predictor.backend == "torch"
    model, tokenizer, cfg, label_names = load_run(run_dir)
    assert predictor.label_names == label_names
    texts = pd.read_csv(synthetic_test_csv)["text"].tolist()
    expected = table_logits(model, tokenizer, cfg, read_table(str(synthetic_test_csv), cfg.data, split="test"))
    got = predictor.predict(texts, batch_size=7)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    info = predictor.describe()
    assert info["labels"] == label_names and info["trainable"] > 0 and info["max_length"] == cfg.model.max_length


def test_encode_caps_length_or_names_the_long_input(trained_run):
    predictor = load_predictor(trained_run[0])
    long_text = "word " * (predictor.max_length * 2)
    assert len(predictor.encode([long_text])[0]) == predictor.max_length
    with pytest.raises(TextTooLong, match="input 1 has"):
        predictor.encode(["short", long_text], truncate=False)


def test_bad_paths_and_backends_are_one_line(trained_run, tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_predictor(tmp_path / "nope")
    with pytest.raises(UserError, match="neither a budgetlora run nor an export"):
        load_predictor(tmp_path)
    with pytest.raises(UserError, match="budgetlora export .* --format onnx"):
        load_predictor(trained_run[0], backend="onnx")
    with pytest.raises(UserError, match="backend 'tpu' is not known"):
        load_predictor(trained_run[0], backend="tpu")


def test_bf16_stores_the_merged_weights_in_bf16_and_stays_close_to_fp32(trained_run, synthetic_test_csv):
    texts = pd.read_csv(synthetic_test_csv)["text"].tolist()[:64]
    fp32 = load_predictor(trained_run[0], precision="fp32")
    bf16 = load_predictor(trained_run[0], precision="bf16")
    assert (fp32.precision, bf16.precision) == ("fp32", "bf16") and bf16.describe()["precision"] == "bf16"
    exact, rounded = fp32.predict(texts), bf16.predict(texts)
    assert rounded.dtype == np.float32
    assert not np.array_equal(rounded, exact)  # it really ran in bf16 ...
    # ... within bf16's rounding (8 bits), accumulated over the layers: typically a few hundredths, at
    # worst (a 64-wide random model, rows whose attention is near a tie) some 6% of the logits' range
    deviation = np.abs(rounded - exact)
    assert np.median(deviation) < 0.05 and deviation.max() < 0.1 * np.abs(exact).max()
    assert (rounded.argmax(1) == exact.argmax(1)).mean() >= 0.95


def test_auto_precision_follows_the_cpus_native_bf16(trained_run):
    from budgetlora.hardware import native_bf16_cpu

    assert load_predictor(trained_run[0], precision="auto").precision == ("bf16" if native_bf16_cpu() else "fp32")
    with pytest.raises(UserError, match="precision 'fp8' is not known"):
        load_predictor(trained_run[0], precision="fp8")
