"""deploy.export: merged transformers folders that plain transformers / pipeline() load with label
names and budgetlora's logits, ONNX equal to torch at every shape, int8, and the refusals."""

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
from transformers import (AutoModelForSequenceClassification, AutoTokenizer, BertConfig, BertForMaskedLM,
                          MPNetConfig, MPNetForMaskedLM, pipeline)

from budgetlora.adapters.model import load_run
from budgetlora.cli import main
from budgetlora.data import read_table
from budgetlora.deploy.export import export_run
from budgetlora.deploy.predictor import load_predictor
from budgetlora.errors import UserError
from budgetlora.evaluation.metrics import table_logits
from budgetlora.training.loop import train

from .conftest import ROBERTA_BASE, tiny_config

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            max_position_embeddings=130, pad_token_id=1)
SHORT = ("train.epochs=1",)
STOCK = {"roberta": "RobertaForSequenceClassification", "bert": "BertForSequenceClassification",
         "mpnet": "MPNetForSequenceClassification"}


@pytest.fixture(scope="session")
def family_dirs(tmp_path_factory, tiny_model_dir):
    """Tiny random RoBERTa (the shared one), BERT and MPNet encoders with the roberta tokenizer."""
    tokenizer = AutoTokenizer.from_pretrained(str(ROBERTA_BASE))
    dirs = {"roberta": tiny_model_dir}
    for family, (config_cls, model_cls) in {"bert": (BertConfig, BertForMaskedLM),
                                             "mpnet": (MPNetConfig, MPNetForMaskedLM)}.items():
        folder = tmp_path_factory.mktemp(f"tiny-{family}")
        torch.manual_seed(0)
        model_cls(config_cls(vocab_size=len(tokenizer), **TINY)).save_pretrained(str(folder))
        tokenizer.save_pretrained(str(folder))
        dirs[family] = folder
    return dirs


def trained(tmp_path, model_dir, csv, *settings):
    run = tmp_path / "run"
    train(tiny_config(model_dir, csv, *SHORT, *settings), run, log=lambda m: None)
    return run


def own_logits(run, csv):
    model, tokenizer, cfg, _ = load_run(run)
    table = read_table(str(csv), cfg.data, split="test")
    return table.texts, table_logits(model, tokenizer, cfg, table)


def plain_logits(folder, texts, remote_code):
    model = AutoModelForSequenceClassification.from_pretrained(str(folder), trust_remote_code=remote_code).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    with torch.inference_mode():
        batch = tokenizer(texts, padding=True, truncation=True, max_length=32, return_tensors="pt")
        return model, model(**batch).logits.numpy()


@pytest.mark.parametrize("family,head", [(f, h) for f in ("roberta", "bert", "mpnet")
                                         for h in ("standard", "standard_lora", "linear", "mean")])
def test_hf_export_loads_in_plain_transformers_and_pipeline_with_budgetloras_logits(
        family, head, family_dirs, synthetic_csv, synthetic_test_csv, tmp_path):
    run = trained(tmp_path, family_dirs[family], synthetic_csv, f"head.type={head}")
    manifest = export_run(run, tmp_path / "export", ["hf"], log=lambda m: None)
    texts, ours = own_logits(run, synthetic_test_csv)
    remote_code = head in ("linear", "mean")
    model, theirs = plain_logits(tmp_path / "export", texts[:24], remote_code)
    np.testing.assert_allclose(theirs, ours[:24], atol=1e-4)
    labels = json.loads((run / "labels.json").read_text())
    assert [model.config.id2label[i] for i in range(len(labels))] == labels
    assert (type(model).__name__ == STOCK[family]) == (not remote_code)
    assert manifest["remote_code"] == remote_code and manifest["formats"] == ["hf"]
    classify = pipeline("text-classification", model=str(tmp_path / "export"), trust_remote_code=remote_code)
    top = classify(texts[:3])
    assert [r["label"] for r in top] == [labels[i] for i in ours[:3].argmax(1)]


def test_a_pooled_head_export_refuses_to_load_without_remote_code(tiny_model_dir, synthetic_csv, tmp_path):
    run = trained(tmp_path, tiny_model_dir, synthetic_csv, "head.type=mean")
    export_run(run, tmp_path / "export", ["hf"], log=lambda m: None)
    with pytest.raises(ValueError, match="trust_remote_code"):  # never a stock head with random weights
        AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "export"), trust_remote_code=False)


def test_a_pooled_head_export_loads_in_a_fresh_process_without_asking_to_run_custom_code(
        tiny_model_dir, synthetic_csv, tmp_path):
    """The tokenizer of a remote-code export loaded without trust_remote_code made transformers ask
    on stdin ("Do you wish to run the custom code?"): a server with an open stdin hung there."""
    run = trained(tmp_path, tiny_model_dir, synthetic_csv, "head.type=mean")
    export_run(run, tmp_path / "export", ["hf"], log=lambda m: None)  # the tokenizer loads alike for every backend
    script = ("import sys; from budgetlora import load_predictor; "
              "print(load_predictor(sys.argv[1], backend='torch').predict(['some news']).shape)")
    child = subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "export")], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        output, _ = child.communicate(timeout=120)  # stdin stays open, as under a service manager
    finally:
        child.kill()
    assert "custom code" not in output and child.returncode == 0, output[-2000:]
    assert output.count("(1, 4)") == 1


@pytest.mark.slow
@pytest.mark.parametrize("method", ["rslora", "dora", "pissa", "olora", "loha", "lokr", "adalora", "vera",
                                    "ia3", "bitfit", "layernorm"])
def test_every_merging_method_exports_with_equal_logits(method, tiny_model_dir, synthetic_csv, synthetic_test_csv,
                                                        tmp_path):
    extra = ("adapter.r=4", "adapter.target_r=2") if method == "adalora" else ()
    run = trained(tmp_path, tiny_model_dir, synthetic_csv, f"adapter.method={method}", *extra)
    export_run(run, tmp_path / "export", ["hf"], log=lambda m: None)
    texts, ours = own_logits(run, synthetic_test_csv)
    _, theirs = plain_logits(tmp_path / "export", texts[:24], remote_code=False)
    np.testing.assert_allclose(theirs, ours[:24], atol=1e-4)


@pytest.mark.parametrize("head", ["standard", "mean"])
def test_onnx_equals_torch_at_every_batch_size_and_length(head, tiny_model_dir, synthetic_csv, tmp_path):
    run = trained(tmp_path, tiny_model_dir, synthetic_csv, f"head.type={head}")
    export_run(run, tmp_path / "export", ["hf", "onnx", "onnx-int8"], log=lambda m: None)
    assert (tmp_path / "export" / "onnx" / "model.onnx").is_file()
    assert {"config.json", "tokenizer.json"} <= {p.name for p in (tmp_path / "export").iterdir()}
    ops = {node.op_type for node in onnx.load(str(tmp_path / "export" / "onnx" / "model.onnx")).graph.node}
    assert "Softmax" in ops and "IsNaN" not in ops  # eager attention traced, not SDPA's masked-row guard
    int8 = onnx.load(str(tmp_path / "export" / "onnx" / "model_quantized.onnx")).graph
    scales = {t.name: list(t.dims) for t in int8.initializer}
    weight_scales = [scales[node.input[3]] for node in int8.node if node.op_type == "MatMulInteger"
                     and len(node.input) > 3 and node.input[3] in scales and node.input[1] in scales]
    assert weight_scales and all(dims and dims[0] > 1 for dims in weight_scales)  # one zero point per output channel
    torch_side = load_predictor(tmp_path / "export", backend="torch")
    onnx_side = load_predictor(tmp_path / "export", backend="onnx")
    int8_side = load_predictor(tmp_path / "export", backend="onnx-int8")
    assert onnx_side.backend == "onnx" and onnx_side.label_names == torch_side.label_names
    rng = np.random.default_rng(0)
    for batch, length in [(1, 1), (1, 32), (3, 5), (17, 32), (64, 9)]:
        ids = [rng.integers(3, 1000, size=int(rng.integers(1, length + 1))) for _ in range(batch)]
        ids[0] = ids[0][:length] if length > 1 else ids[0][:1]
        expected = torch_side.logits(ids, batch_size=batch)
        np.testing.assert_allclose(onnx_side.logits(ids, batch_size=batch), expected, atol=1e-3)
        assert int8_side.logits(ids, batch_size=batch).shape == expected.shape
    assert (onnx_side.precision, int8_side.precision) == ("fp32", "int8")
    assert load_predictor(tmp_path / "export", backend="onnx", precision="auto").precision == "fp32"
    with pytest.raises(UserError, match="bf16 is for the torch backend"):
        load_predictor(tmp_path / "export", backend="onnx", precision="bf16")
    bf16_side = load_predictor(tmp_path / "export", backend="torch", precision="bf16")
    assert bf16_side.precision == "bf16" and bf16_side.describe()["precision"] == "bf16"
    np.testing.assert_allclose(bf16_side.logits(ids), expected, rtol=0.02, atol=0.1)


def test_export_refusals_are_one_line_and_overwrite_only_replaces_an_export(trained_run, tmp_path, capsys):
    run, _ = trained_run
    out = tmp_path / "export"
    assert main(["export", str(run), "--out", str(out), "--format", "hf"]) == 0
    first = json.loads((out / "budgetlora_export.json").read_text())
    assert first["source_run"] == str(run.resolve()) and first["budgetlora_version"]
    assert main(["export", str(run), "--out", str(out)]) == 2
    assert "already holds an export" in capsys.readouterr().err
    assert main(["export", str(run), "--out", str(out), "--format", "hf,onnx", "--overwrite"]) == 0
    assert json.loads((out / "budgetlora_export.json").read_text())["formats"] == ["hf", "onnx"]
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="not a budgetlora export"):
        export_run(run, other, ["hf"], overwrite=True)
    assert (other / "keep.txt").read_text() == "mine"
    with pytest.raises(UserError, match="format tflite is not known"):
        export_run(run, tmp_path / "x", ["tflite"])


def test_an_unfinished_or_corrupt_run_is_one_line(trained_run, tmp_path):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(trained_run[0], run)
    (run / "metrics.json").unlink()
    with pytest.raises(UserError, match="unfinished run .* --resume"):
        export_run(run, tmp_path / "x", ["hf"])
    shutil.copy(trained_run[0] / "metrics.json", run / "metrics.json")
    weights = run / "adapter" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(UserError, match="truncated or corrupt"):
        export_run(run, tmp_path / "x", ["hf"])
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_real_minilm_exports_to_hf_onnx_and_int8_with_equal_predictions(tmp_path):
    from budgetlora.config import load_config
    from budgetlora.quickstart import minilm_path, sample_files

    train_file, eval_file = sample_files()
    cfg = load_config("minilm-quickstart", [f"model.name={minilm_path()}", f"data.train={train_file}",
                                            "train.max_steps=30", "train.eval_every=30"])
    train(cfg, tmp_path / "run", log=lambda m: None)
    manifest = export_run(tmp_path / "run", tmp_path / "export", ["hf", "onnx", "onnx-int8"], log=lambda m: None)
    assert manifest["checks"]["hf_max_abs_diff"] <= 1e-4 and manifest["checks"]["onnx_max_abs_diff"] <= 1e-3
    texts, ours = own_logits(tmp_path / "run", eval_file)
    texts, ours = texts[:200], ours[:200]
    # the quickstart recipe has the mean head: its export ships its modeling file (remote code)
    classify = pipeline("text-classification", model=str(tmp_path / "export"), trust_remote_code=True)
    labels = json.loads((tmp_path / "run" / "labels.json").read_text())
    assert [r["label"] for r in classify(texts[:8])] == [labels[i] for i in ours[:8].argmax(1)]
    for backend, atol in [("torch", 1e-4), ("onnx", 1e-3)]:
        predictor = load_predictor(tmp_path / "export", backend=backend)
        np.testing.assert_allclose(predictor.predict(texts), ours, atol=atol)
    int8 = load_predictor(tmp_path / "export", backend="onnx-int8").predict(texts)
    assert np.mean(int8.argmax(1) == ours.argmax(1)) >= 0.97
