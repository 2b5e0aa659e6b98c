"""Predictor: one face for every way a trained classifier can be loaded for inference.

`load_predictor(path)` takes a training run folder (`budgetlora train --out`) or an export folder
(`budgetlora export --out`) and returns a `Predictor` whose backend is chosen by what the folder
holds, or by `backend=`:

* `torch`: a run's adapter merged into the base weights, or an export's merged `model.safetensors`;
* `onnx`: onnxruntime on an export's `onnx/model.onnx`;
* `onnx-int8`: onnxruntime on its dynamically quantised `onnx/model_quantized.onnx`.

`precision=` (torch backend): `fp32`, `bf16` (the merged weights stored once in bf16, logits
returned in fp32), or `auto`: bf16 where the CPU or GPU computes it natively (`hardware.choose`).

Every backend takes token ids (numpy, unpadded) and returns float32 logits in row order, batched
by length; `encode` tokenises with the model's length cap. The export folder layout itself is
defined in `export.py` (EXPORT_MANIFEST, ONNX_FILES).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import files, rundir
from ..errors import UserError

EXPORT_MANIFEST = "budgetlora_export.json"
ONNX_FILES = {"onnx": "onnx/model.onnx", "onnx-int8": "onnx/model_quantized.onnx"}
BACKENDS = ("torch", "onnx", "onnx-int8")
INFERENCE_PRECISIONS = ("auto", "fp32", "bf16")


class TextTooLong(UserError):
    """An input has more tokens than the model takes (raised by `encode(truncate=False)`)."""

    def __init__(self, index: int, tokens: int, limit: int):
        super().__init__(f"input {index} has {tokens} tokens, more than the model's {limit}; "
                         f"shorten it or allow truncation")
        self.index, self.tokens, self.limit = index, tokens, limit


def is_export(path: Path) -> bool:
    return (Path(path) / EXPORT_MANIFEST).is_file()


def is_run(path: Path) -> bool:
    return (Path(path) / rundir.CONFIG).is_file() and (Path(path) / rundir.ADAPTER).is_dir()


@dataclass
class Predictor:
    """A loaded classifier: `logits(token_ids)` on its backend, with what a client needs to know."""

    backend: str
    label_names: list[str]
    max_length: int
    tokenizer: object
    run_logits: object  # callable(list[np.ndarray], batch_size) -> np.ndarray
    source: str
    info: dict = field(default_factory=dict)  # model, method, head, budget, trainable, ...
    batch_size: int = 64
    precision: str = "fp32"  # what the backend computes in: fp32 / bf16 (torch), fp32 / int8 (onnx)

    @property
    def pad_id(self) -> int:
        from ..evaluation.metrics import pad_id_of

        return pad_id_of(self.tokenizer)

    def encode(self, texts: list[str], truncate: bool = True) -> list[np.ndarray]:
        """Token ids per text, capped at max_length; truncate=False raises TextTooLong instead."""
        enc = self.tokenizer(list(texts), truncation=truncate, max_length=self.max_length if truncate else None)
        ids = [np.asarray(row, dtype=np.int64) for row in enc["input_ids"]]
        if not truncate:
            for i, row in enumerate(ids):
                if len(row) > self.max_length:
                    raise TextTooLong(i, len(row), self.max_length)
        return ids

    def logits(self, token_ids: list[np.ndarray], batch_size: int | None = None) -> np.ndarray:
        """(rows, classes) float32 logits in row order; batches sorted by length."""
        if not token_ids:
            return np.empty((0, len(self.label_names)), dtype=np.float32)
        return self.run_logits(token_ids, batch_size or self.batch_size)

    def predict(self, texts: list[str], batch_size: int | None = None) -> np.ndarray:
        return self.logits(self.encode(texts), batch_size)

    def describe(self) -> dict:
        """What GET /info shows: nothing that names a file on the server's disk beyond its folder name."""
        return {"model": self.info.get("model"), "labels": list(self.label_names), "max_length": self.max_length,
                "backend": self.backend, "precision": self.precision, "source": Path(self.source).name,
                **{k: v for k, v in self.info.items() if k != "model"}}


def load_predictor(path: str | Path | list, backend: str | None = None, *, threads: int | None = None,
                   precision: str = "fp32") -> Predictor:
    """A Predictor for a run folder or an export folder; `backend` None: the best the folder holds.
    A list of folders: an Ensemble of them (deploy/ensemble.py; one folder: that folder's Predictor)."""
    if isinstance(path, (list, tuple)):
        if len(path) > 1:
            from .ensemble import load_ensemble

            return load_ensemble(list(path), backend, precision=precision, threads=threads)
        path = path[0]
    path = Path(path)
    if backend is not None and backend not in BACKENDS:
        raise UserError(f"backend {backend!r} is not known; choose one of {', '.join(BACKENDS)}")
    if precision not in INFERENCE_PRECISIONS:
        raise UserError(f"precision {precision!r} is not known; choose one of {', '.join(INFERENCE_PRECISIONS)}")
    if threads:
        import torch

        torch.set_num_threads(threads)
    if is_export(path):
        return _load_export(path, backend, threads, precision)
    if is_run(path):
        if backend not in (None, "torch"):
            raise UserError(f"{path} is a training run, which only the torch backend reads; "
                            f"`budgetlora export {path} --out DIR --format {backend}` first")
        return _load_run(path, precision)
    if not path.exists():
        raise UserError(f"{path} does not exist; give a run folder (budgetlora train --out) or an export folder")
    raise UserError(f"{path} is neither a budgetlora run nor an export folder (no {rundir.CONFIG} + "
                    f"{rundir.ADAPTER}/, no {EXPORT_MANIFEST}); give the --out folder of `budgetlora train` or `export`")


def _in_precision(model, precision: str):
    """(model, precision used): bf16 casts the merged weights once, so no step casts them again."""
    import torch

    from ..hardware import choose

    if any(p.dtype not in (torch.float32, torch.bfloat16, torch.float16) for p in model.parameters()):
        return model, "quantized"  # a QLoRA base stays in the format it was trained on
    chosen = choose(precision, next(model.parameters()).device.type).value
    if chosen == "bf16":
        model = model.to(torch.bfloat16)
    return model, chosen


def _torch_logits(model):
    from ..evaluation.metrics import compute_logits

    def run(token_ids, batch_size):
        return compute_logits(model, token_ids, batch_size, run.pad_id)

    return run


def _load_run(path: Path, precision: str) -> Predictor:
    from ..adapters.model import load_run

    model, tokenizer, cfg, label_names = load_run(path)
    model, precision = _in_precision(model, precision)
    run = _torch_logits(model)
    predictor = Predictor("torch", label_names, cfg.model.max_length, tokenizer, run, str(path),
                          info=_run_info(path, cfg), batch_size=cfg.train.eval_batch_size, precision=precision)
    run.pad_id = predictor.pad_id
    return predictor


def _run_info(path: Path, cfg) -> dict:
    budget = {}
    if (path / rundir.BUDGET).is_file():
        budget = files.read_json(path / rundir.BUDGET, "retrain the run")
    return {"model": cfg.model.name, "method": cfg.adapter.method, "head": cfg.head.type,
            "trainable": budget.get("trainable"), "budget": budget.get("max_trainable", cfg.budget.max_trainable)}


def _load_export(path: Path, backend: str | None, threads: int | None, precision: str) -> Predictor:
    from transformers import AutoTokenizer

    from ..adapters.model import quiet_transformers

    manifest = files.read_json(path / EXPORT_MANIFEST, "export the run again with --overwrite")
    formats = manifest.get("formats", [])
    if backend is None:
        backend = next(b for b in ("torch", "onnx", "onnx-int8") if (b == "torch" and "hf" in formats) or b in formats) \
            if formats else "torch"
    wanted = "hf" if backend == "torch" else backend
    if wanted not in formats:
        raise UserError(f"{path} holds no {wanted} export (it has: {', '.join(formats) or 'none'}); "
                        f"export it with --format {wanted}, or choose --backend from those")
    quiet_transformers()
    # the tokenizer needs no model code; left unset, transformers asks on stdin whether to run a
    # pooled-head export's modeling file (and a service with an open stdin waits there)
    tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)
    label_names = list(manifest["label_names"])
    info = {k: manifest.get(k) for k in ("model", "method", "head", "trainable", "budget")}
    info["budgetlora_version"] = manifest.get("budgetlora_version")
    if backend == "torch":
        model, precision = _in_precision(_export_torch_model(path, manifest), precision)
        run = _torch_logits(model)
    else:
        if precision == "bf16":
            raise UserError(f"--precision bf16 is for the torch backend; the {backend} backend runs its graph as exported")
        run, precision = _onnx_logits(path / ONNX_FILES[backend], threads), "int8" if backend == "onnx-int8" else "fp32"
    predictor = Predictor(backend, label_names, int(manifest["max_length"]), tokenizer, run, str(path), info=info,
                          precision=precision)
    run.pad_id = predictor.pad_id
    return predictor


def _export_torch_model(path: Path, manifest: dict):
    import torch
    from transformers import AutoModelForSequenceClassification

    from ..adapters.model import quiet_transformers
    from ..hardware import inference_device

    quiet_transformers()
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            str(path), trust_remote_code=bool(manifest.get("remote_code")), dtype=torch.float32)
    except Exception as e:  # noqa: BLE001 -- safetensors/config errors: a damaged export
        raise files.corrupt(path / "model.safetensors", e, "export the run again with --overwrite") from None
    return model.to(inference_device()).eval()


def _onnx_logits(model_file: Path, threads: int | None):
    import onnxruntime as ort

    from ..data import eval_batches
    from ..hardware import inference_batch_tokens

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or int(os.environ.get("OMP_NUM_THREADS", 0) or 0)
    try:
        session = ort.InferenceSession(str(model_file), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 -- a truncated or damaged graph
        raise files.corrupt(model_file, e, "export the run again with --overwrite") from None

    def run(token_ids, batch_size):
        out = None
        for batch in eval_batches(token_ids, batch_size, run.pad_id, max_tokens=inference_batch_tokens("cpu")):
            logits = session.run(["logits"], {"input_ids": batch.input_ids.numpy(),
                                              "attention_mask": batch.attention_mask.numpy()})[0]
            if out is None:
                out = np.empty((len(token_ids), logits.shape[1]), dtype=np.float32)
            out[batch.index] = logits
        return out

    return run
