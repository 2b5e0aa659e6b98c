"""The inputs of the GPU check: the data file (the 27,190 AG News rows where they travelled,
else the bundled sample, said so), the MPNet folder (the carried parts joined by the packer's own
assemble.sh), and for --dry-run tiny random RoBERTa and MPNet encoders with the real roberta-base
tokenizer."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ROBERTA_FIXTURE = REPO / "tests" / "fixtures" / "roberta-base-tokenizer"  # real config + tokenizer, no weights
FALLBACK_DATA = REPO / "budgetlora" / "assets" / "quickstart" / "train.csv.gz"
# where the 27,190 rows can be on the device: only the checkout and carried paths travel there
DATA_CANDIDATES = [".device-carry/data/ag_news/train.csv.gz", "shared/data/ag_news/train.csv.gz",
                   "../shared/data/ag_news/train.csv.gz"]
PARTS_INBOX = Path("/tmp/parts")  # where assemble.sh (shared/tools/pack_model.py) reads the parts from
MPNET_TARGET = Path("/tmp/models/all-mpnet-base-v2")


def default_data() -> str:
    """The first of DATA_CANDIDATES that exists (relative to the checkout), else the first."""
    found = [c for c in DATA_CANDIDATES if (REPO / c).is_file()]
    return str(REPO / (found or DATA_CANDIDATES)[0])


def choose_data(requested: str) -> dict:
    """{path, rows, requested, fallback, note}: the requested file, or the bundled sample if it is absent."""
    from budgetlora import load_config
    from budgetlora.data import read_table

    path, note = Path(requested), None
    if not path.is_file():
        note = f"{requested} not found; used the bundled sample {FALLBACK_DATA.relative_to(REPO)} instead"
        path = FALLBACK_DATA
    cfg = load_config("default", [f"data.train={path}"])
    n = len(read_table(str(path), cfg.data, split="train"))
    return {"path": str(path.resolve()), "rows": n, "requested": requested, "fallback": note is not None, "note": note}


def assemble_mpnet(parts: Path, target: Path, log) -> dict:
    """Join the parts packed by shared/tools/pack_model.py (parts/p*/part_*, parts/meta/assemble.sh)
    into `target`, checked against the sha256 the packer recorded."""
    found = sorted(p.name for p in parts.glob("p*/part_*"))
    info = {"parts_dir": str(parts), "parts_found": found, "target": str(target)}
    script = parts / "meta" / "assemble.sh"
    if not script.is_file() or not found:
        return {**info, "ok": False, "error": f"no packed model in {parts} (meta/assemble.sh and p*/part_*)"}
    shutil.rmtree(PARTS_INBOX, ignore_errors=True)
    PARTS_INBOX.mkdir(parents=True)
    for part in parts.glob("p*/part_*"):
        shutil.copy2(part, PARTS_INBOX / part.name)
    done = subprocess.run(["bash", str(script), str(target)], capture_output=True, text=True)
    log(f"assemble.sh: {done.stdout}{done.stderr}")
    shutil.rmtree(PARTS_INBOX, ignore_errors=True)
    ok = done.returncode == 0 and (target / "config.json").is_file()
    return {**info, "ok": ok, **({} if ok else {"error": (done.stdout + done.stderr)[-1500:]})}


def tiny_encoder(kind: str, folder: Path) -> Path:
    """A 2-layer, 64-wide random encoder (`roberta` or `mpnet`) saved with the real roberta-base
    tokenizer, 514 positions so rows padded to 256 fit."""
    import torch
    from transformers import AutoConfig, AutoModel, AutoTokenizer, MPNetConfig

    tokenizer = AutoTokenizer.from_pretrained(str(ROBERTA_FIXTURE))
    small = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128)
    if kind == "roberta":
        config = AutoConfig.from_pretrained(str(ROBERTA_FIXTURE), **small)
    else:
        config = MPNetConfig(vocab_size=len(tokenizer), max_position_embeddings=514,
                             pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                             eos_token_id=tokenizer.eos_token_id, **small)
    torch.manual_seed(0)
    AutoModel.from_config(config).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder
