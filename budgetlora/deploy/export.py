"""Export: a finished run as a folder that plain transformers, onnxruntime and serving engines read.

`export_run(run_dir, out, formats)` writes, in one folder (the layout text-embeddings-inference
and transformers both read):

    config.json               id2label / label2id carry the run's class names
    tokenizer.json, ...       the run's tokenizer
    model.safetensors         format "hf": the adapter merged into the base weights, head included
    modeling_budgetlora.py    only for head.type=linear|mean (see remote_code/modeling_budgetlora.py)
    onnx/model.onnx           format "onnx": inputs input_ids, attention_mask; output logits;
                              dynamic batch and sequence axes (torch.onnx dynamo exporter)
    onnx/model_quantized.onnx format "onnx-int8": onnxruntime dynamic int8 quantisation of it
    budgetlora_export.json    what it came from (run, budgetlora version, formats) and the checks

Heads `standard` and `standard_lora` merge onto the architecture's stock head and load with the
stock class. `linear` and `mean` have no stock equivalent, so the folder ships a small
self-contained modeling file (`trust_remote_code=True`) under a model type of its own: loading it
without remote code fails loudly instead of building a stock head with random weights.

Every format is checked before the folder appears: the reloaded model's logits must equal those
of budgetlora's own merged model (hf: atol 1e-4; onnx: 1e-3 at several batch sizes and lengths).
The folder is built beside `out` and swapped in complete (files.staged_dir).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from .. import __version__, files, rundir
from ..errors import UserError, first_line
from .predictor import EXPORT_MANIFEST, ONNX_FILES, is_export

FORMATS = ("hf", "onnx", "onnx-int8")
REMOTE_CODE = Path(__file__).with_name("remote_code") / "modeling_budgetlora.py"
ENCODER_LINE = "from transformers import BertConfig as EncoderConfig, BertModel as EncoderModel  # budgetlora: encoder classes"
HF_ATOL, ONNX_ATOL = 1e-4, 1e-3
READING_SETTINGS = ("format", "text_column", "label_column", "id_column", "label_names", "clean")
PROBE_TEXTS = ["a", "Stocks rallied on Wall Street after the central bank held rates.",
               "The team won the final in extra time, their third title in four years. " * 6]


def export_run(run_dir: str | Path, out: str | Path, formats=("hf",), *, overwrite: bool = False,
               log=print) -> dict:
    """Export finished run `run_dir` to folder `out` in `formats`; returns the manifest."""
    run_dir, out = Path(run_dir), Path(out)
    formats = check_formats(formats)
    check_out(out, overwrite=overwrite)
    model, tokenizer, cfg, label_names = load_finished_run(run_dir)
    probes = probe_batches(tokenizer, cfg.model.max_length)
    expected = [torch_logits(model, batch) for batch in probes]
    checks = {}
    with files.staged_dir(out) as staging:
        remote_code = cfg.head.type in ("linear", "mean")
        stock = write_transformers_folder(model, tokenizer, staging, cfg.head.type, weights="hf" in formats)
        if "hf" in formats:
            checks["hf_max_abs_diff"] = check_hf(staging, probes, expected, remote_code)
            log(f"hf: merged weights, logits equal budgetlora's (max |diff| {checks['hf_max_abs_diff']:.1e})")
        if {"onnx", "onnx-int8"} & set(formats):
            checks.update(write_onnx(stock, staging, probes, expected, formats, log))
        manifest = manifest_of(run_dir, cfg, label_names, formats, remote_code, checks)
        files.write_json(staging / EXPORT_MANIFEST, manifest)
        readable_by_all(staging)
    log(f"exported {run_dir} -> {out} ({', '.join(formats)})")
    return manifest


# ---------------------------------------------------------------- checks before any work


def check_formats(formats) -> list[str]:
    formats = [formats] if isinstance(formats, str) else list(formats)
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise UserError(f"export format {', '.join(unknown) or '(none)'} is not known; choose from {', '.join(FORMATS)}")
    return [f for f in FORMATS if f in formats]


def check_out(out: Path, *, overwrite: bool) -> None:
    """Refuse to replace anything but an earlier export, and that only with --overwrite."""
    if not out.exists():
        if not out.parent.is_dir():
            raise UserError(f"folder {out.parent} does not exist; create it or choose another --out")
        return
    if not out.is_dir():
        raise UserError(f"{out} is a file; give a folder name for --out")
    if not any(out.iterdir()):
        return
    if not is_export(out):
        raise UserError(f"{out} exists and is not a budgetlora export; choose another --out (nothing was written)")
    if not overwrite:
        raise UserError(f"{out} already holds an export; choose another --out or pass --overwrite")


def load_finished_run(run_dir: Path):
    """load_run(merge=True) of a finished run whose method merges; one line otherwise."""
    from ..adapters.model import load_run
    from ..adapters.registry import method_spec

    if not run_dir.is_dir():
        raise UserError(f"{run_dir} does not exist; give the --out folder of `budgetlora train`")
    if rundir.is_started(run_dir) and not rundir.is_finished(run_dir):
        raise UserError(f"{run_dir} is an unfinished run (no {rundir.METRICS}); finish it with "
                        f"`budgetlora train --resume --out {run_dir}` before exporting")
    cfg = rundir.read_config(run_dir) if (run_dir / rundir.CONFIG).is_file() else None
    if cfg is not None and not method_spec(cfg.adapter.method).merges:
        raise UserError(f"adapter.method={cfg.adapter.method} keeps a quantised base that cannot be merged "
                        f"exactly, so it has no export; train with adapter.method=lora to export")
    model, tokenizer, cfg, label_names = load_run(run_dir, merge=True)
    return model.to("cpu").eval(), tokenizer, cfg, label_names


# ---------------------------------------------------------------- the transformers folder


def write_transformers_folder(model, tokenizer, folder: Path, head_type: str, *, weights: bool):
    """config.json (+ weights, + remote code for pooled heads) and the tokenizer in `folder`;
    returns the model to export to ONNX (the stock model, or the remote-code one)."""
    if head_type in ("linear", "mean"):
        model = to_remote_code_model(model, folder, pooling="first" if head_type == "linear" else "mean")
    model.config.architectures = [type(model).__name__]
    if weights:
        model.save_pretrained(str(folder))
    else:
        model.config.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return model


def to_remote_code_model(model, folder: Path, pooling: str):
    """The merged pooled-head model rebuilt as the shipped modeling file's class (same weights)."""
    base = getattr(model, model.base_model_prefix)
    source = REMOTE_CODE.read_text(encoding="utf-8")
    encoder_line = (f"from transformers import {type(model.config).__name__} as EncoderConfig, "
                    f"{type(base).__name__} as EncoderModel  # budgetlora: encoder classes")
    files.write_text(folder / REMOTE_CODE.name, source.replace(ENCODER_LINE, encoder_line))
    module = import_file(folder / REMOTE_CODE.name)
    settings = {k: v for k, v in model.config.to_dict().items() if k not in ("model_type", "transformers_version", "architectures")}
    config = module.BudgetloraPooledConfig(**settings, pooling=pooling, auto_map={
        "AutoConfig": "modeling_budgetlora.BudgetloraPooledConfig",
        "AutoModelForSequenceClassification": "modeling_budgetlora.BudgetloraPooledForSequenceClassification"})
    config._attn_implementation = model.config._attn_implementation
    rebuilt = module.BudgetloraPooledForSequenceClassification(config)
    state = {k: v for k, v in model.state_dict().items()}
    missing, unexpected = rebuilt.load_state_dict(state, strict=False)
    if missing or unexpected:  # a bug, not bad input: the two classes must hold the same tensors
        raise RuntimeError(f"pooled-head export: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return rebuilt.eval()


def readable_by_all(folder: Path) -> None:
    """Files as the umask allows (transformers writes weights 0600): a server under another user,
    e.g. a text-embeddings-inference container, must be able to read them."""
    umask = os.umask(0)
    os.umask(umask)
    for path in folder.rglob("*"):
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def import_file(path: Path):
    spec = importlib.util.spec_from_file_location(f"budgetlora_export_{time.monotonic_ns()}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check_hf(folder: Path, probes, expected, remote_code: bool) -> float:
    """Reload `folder` with plain AutoModelForSequenceClassification; max |logit diff| vs budgetlora."""
    from transformers import AutoModelForSequenceClassification

    reloaded = AutoModelForSequenceClassification.from_pretrained(str(folder), trust_remote_code=remote_code,
                                                                  dtype=torch.float32).eval()
    return agreement(expected, [torch_logits(reloaded, batch) for batch in probes], HF_ATOL, "hf")


# ---------------------------------------------------------------- ONNX


def write_onnx(model, folder: Path, probes, expected, formats: list[str], log) -> dict:
    """onnx/model.onnx (and/or its int8 quantisation), each checked against the torch logits."""
    graph = folder / ONNX_FILES["onnx"]
    graph.parent.mkdir(exist_ok=True)
    export_graph(model, graph)
    checks = {}
    if "onnx" in formats:
        checks["onnx_max_abs_diff"] = agreement(expected, onnx_logits(graph, probes), ONNX_ATOL, "onnx")
        log(f"onnx: {graph.relative_to(folder)}, logits equal torch's (max |diff| {checks['onnx_max_abs_diff']:.1e})")
    if "onnx-int8" in formats:
        quantized = folder / ONNX_FILES["onnx-int8"]
        quantize(graph, quantized)
        got = onnx_logits(quantized, probes)
        checks["onnx_int8_max_abs_diff"] = float(max(np.abs(e - g).max() for e, g in zip(expected, got)))
        checks["onnx_int8_argmax_agreement"] = float(np.mean(np.concatenate(
            [e.argmax(1) == g.argmax(1) for e, g in zip(expected, got)])))
        log(f"onnx-int8: {quantized.relative_to(folder)} (max |diff| {checks['onnx_int8_max_abs_diff']:.2f})")
    if "onnx" not in formats:
        graph.unlink()
    return checks


class LogitsOnly(torch.nn.Module):
    """(input_ids, attention_mask) -> logits: the graph's whole interface."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


def export_graph(model, path: Path) -> None:
    """torch.onnx.export with the dynamo exporter, dynamic batch and sequence axes, one file.
    Traced with eager attention (MatMul, Add mask, Softmax, MatMul): onnxruntime ran that graph's
    int8 quantisation 1.3x faster than the SDPA decomposition's, whose fully-masked-row guard
    (IsNaN + Where) and transposes cost a fifth of its time (docs/speed.md)."""
    from torch.export import Dim

    ids = torch.ones((2, 8), dtype=torch.long)
    mask = torch.ones((2, 8), dtype=torch.long)
    batch, sequence = Dim("batch"), Dim("sequence")
    axes = {0: batch, 1: sequence}
    try:
        with quiet_exporters(), attention_implementation(model, "eager"):
            program = torch.onnx.export(LogitsOnly(model).eval(), (ids, mask), dynamo=True, verbose=False,
                                        input_names=["input_ids", "attention_mask"], output_names=["logits"],
                                        dynamic_shapes={"input_ids": axes, "attention_mask": axes},
                                        optimize=True, report=False)
    except Exception as e:  # noqa: BLE001 -- an architecture the exporter cannot trace
        raise UserError(f"ONNX export of {type(model).__name__} failed ({first_line(e)}); "
                        f"export with --format hf and serve it with the torch backend") from None
    with files.atomic_path(path) as tmp:
        program.save(str(tmp), external_data=False)


def quantize(graph: Path, out: Path) -> None:
    """onnxruntime dynamic int8 quantisation (weights int8 with one scale per output channel,
    activations quantised at run time), after onnxruntime's recommended pre-processing (shape
    inference + graph optimisation). Per channel: on the quickstart's MiniLM the per-tensor scale
    cost 0.45 points of held-out accuracy (3 seeds) and per-channel none, at the same speed."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = out.with_name(f".{out.stem}.prepared.onnx")
    try:
        with quiet_exporters():
            quant_pre_process(str(graph), str(prepared), auto_merge=True)
            with files.atomic_path(out) as tmp:
                quantize_dynamic(str(prepared), str(tmp), weight_type=QuantType.QInt8, per_channel=True)
    finally:
        prepared.unlink(missing_ok=True)


@contextlib.contextmanager
def attention_implementation(model, implementation: str):
    """`model` runs `implementation` inside the block, its own one again after it. Set on the
    encoder (a stock transformers class, sharing the config): transformers refuses to switch a
    class it cannot read the source of, such as the pooled head's remote-code wrapper."""
    encoder = model.base_model
    before = encoder.config._attn_implementation
    encoder.set_attn_implementation(implementation)
    try:
        yield
    finally:
        encoder.set_attn_implementation(before)


@contextlib.contextmanager
def quiet_exporters():
    """Keep the exporters' chatter (torchvision ops skipped, axis renames, hints) off the console."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "root", "onnxruntime")]
    levels = [log.level for log in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for log in loggers:
            log.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for log, level in zip(loggers, levels):
                log.setLevel(level)


def onnx_logits(graph: Path, probes) -> list[np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    return [session.run(["logits"], {"input_ids": b["input_ids"].numpy(),
                                     "attention_mask": b["attention_mask"].numpy()})[0] for b in probes]


# ---------------------------------------------------------------- probes and the manifest


def probe_batches(tokenizer, max_length: int) -> list[dict]:
    """Inputs the checks run: batch 1 x length 1, batch 1, a padded batch of 3, a batch of 7."""
    def batch(texts):
        enc = tokenizer(texts, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    one_token = batch(["a"])
    one_token = {k: v[:, :1] for k, v in one_token.items()}
    return [one_token, batch(PROBE_TEXTS[1:2]), batch(PROBE_TEXTS), batch((PROBE_TEXTS * 3)[:7])]


@torch.inference_mode()
def torch_logits(model, batch: dict) -> np.ndarray:
    return model(**batch).logits.float().numpy()


def agreement(expected, got, atol: float, what: str) -> float:
    diff = float(max(np.abs(e - g).max() for e, g in zip(expected, got)))
    if not diff <= atol:  # a bug of the export, never bad input: keep the traceback
        raise RuntimeError(f"{what} export check failed: logits differ from budgetlora's by {diff:.2e} (> {atol})")
    return diff


def manifest_of(run_dir: Path, cfg, label_names, formats, remote_code: bool, checks: dict) -> dict:
    budget = json.loads((run_dir / rundir.BUDGET).read_text()) if (run_dir / rundir.BUDGET).is_file() else {}
    return {
        "budgetlora_version": __version__,
        "source_run": str(run_dir.resolve()),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "formats": list(formats),
        "files": {"hf": "model.safetensors", **ONNX_FILES},
        "label_names": list(label_names),
        "max_length": cfg.model.max_length,
        "model": cfg.model.name,
        "method": cfg.adapter.method,
        "head": cfg.head.type,
        "remote_code": remote_code,
        "trainable": budget.get("trainable"),
        "budget": budget.get("max_trainable", cfg.budget.max_trainable),
        # how files are read for this model (evaluate / predict on the export, as on the run)
        "data": {key: getattr(cfg.data, key) for key in READING_SETTINGS},
        "seed": cfg.train.seed,
        "onnx": {"inputs": ["input_ids", "attention_mask"], "outputs": ["logits"],
                 "dynamic_axes": ["batch", "sequence"]} if {"onnx", "onnx-int8"} & set(formats) else None,
        "checks": checks,
    }
