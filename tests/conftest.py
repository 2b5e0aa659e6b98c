"""Shared fixtures: tiny random encoders with the real roberta-base tokenizer, a synthetic task.

Everything is offline: the hub is switched off before any Hugging Face library is imported.
"""

import os
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if os.environ.get("PYTEST_XDIST_WORKER"):  # `-n N` runs N workers side by side: one thread each, children too
    os.environ["OMP_NUM_THREADS"] = "1"

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures"
ROBERTA_BASE = FIXTURES / "roberta-base-tokenizer"  # real config + tokenizer, no weights
GPT2_TOKENIZER = FIXTURES / "gpt2-tokenizer"  # real config + tokenizer, no weights
NLTK_FIXTURE = FIXTURES / "nltk_data"  # corpora/stopwords.zip (34 kB); WordNet (11 MB) is not bundled

TOPICS = {
    "sports": ["football", "goal", "team", "match", "coach", "league"],
    "money": ["stock", "market", "bank", "profit", "shares", "investors"],
    "tech": ["software", "chip", "computer", "internet", "phone", "users"],
    "world": ["president", "war", "election", "minister", "border", "troops"],
}
FILLER = "the a of in on today said new after over report week".split()

# settings under which the tiny model learns the synthetic task in a few seconds
TINY_TRAIN = [
    "model.max_length=32",
    "train.epochs=10",
    "train.batch_size=16",
    "train.lr=1e-2",
    "train.eval_every=40",
    "train.early_stopping_patience=",
    "train.progress=false",
    "data.val_size=0.2",
    "adapter.r=4",
    "train.report=false",  # the report and the tracker cost seconds; trained_run turns them on
    "train.tracker=none",
    # fp32 everywhere: these tests compare logits exactly across save / reload / processes, and CI's CPU
    # may or may not have native bf16 (where `auto` would pick bf16); test_mixed_precision.py covers bf16
    "train.precision=fp32",
]


def synthetic_frame(n: int = 600, seed: int = 0) -> pd.DataFrame:
    """Short texts whose topic words decide the label; a model that learns gets far above 25%."""
    rng = np.random.default_rng(seed)
    rows = []
    names = list(TOPICS)
    for i in range(n):
        label = names[i % len(names)]
        words = list(rng.choice(FILLER, 3)) + list(rng.choice(TOPICS[label], 3))
        rng.shuffle(words)
        rows.append((" ".join(words), label))
    return pd.DataFrame(rows, columns=["text", "label"])


def pytest_configure(config):
    torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else min(2, torch.get_num_threads()))


@pytest.fixture(autouse=True, scope="session")
def _private_token_cache(tmp_path_factory):
    """Tests never read or fill the user's ~/.cache/budgetlora."""
    os.environ["BUDGETLORA_CACHE"] = str(tmp_path_factory.mktemp("token-cache"))


@pytest.fixture(scope="session")
def tokenizer_dir() -> Path:
    return ROBERTA_BASE


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A 2-layer random RoBERTa saved with the real roberta-base tokenizer."""
    from transformers import AutoTokenizer, RobertaConfig, RobertaForMaskedLM

    folder = tmp_path_factory.mktemp("tiny-roberta")
    tokenizer = AutoTokenizer.from_pretrained(str(ROBERTA_BASE))
    config = RobertaConfig(
        vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=128, max_position_embeddings=130, pad_token_id=1, bos_token_id=0,
        eos_token_id=2, type_vocab_size=1,
    )
    torch.manual_seed(0)
    RobertaForMaskedLM(config).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="session")
def synthetic_csv(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "train.csv"
    synthetic_frame().to_csv(path, index=False)
    return path


@pytest.fixture(scope="session")
def synthetic_test_csv(tmp_path_factory) -> Path:
    """Held-out rows with an id column, labels as names."""
    frame = synthetic_frame(n=120, seed=1)
    frame.insert(0, "id", [f"row-{i}" for i in range(len(frame))])
    path = tmp_path_factory.mktemp("data") / "test.csv"
    frame.to_csv(path, index=False)
    return path


def tiny_config(model_dir, train_csv, *extra):
    from budgetlora.config import load_config

    return load_config("r6-qkv-a24", [f"model.name={model_dir}", f"data.train={train_csv}", *TINY_TRAIN, *extra])


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, tiny_model_dir, synthetic_csv, synthetic_test_csv):
    """One finished run shared by the evaluate / predict / reload tests."""
    from budgetlora.training.loop import train

    out = tmp_path_factory.mktemp("runs") / "run"
    cfg = tiny_config(tiny_model_dir, synthetic_csv, f"data.test={synthetic_test_csv}",
                      "train.report=true", "train.tracker=tensorboard")
    metrics = train(cfg, out, log=lambda message: None)
    return out, metrics


@pytest.fixture(scope="session")
def second_run(tmp_path_factory, tiny_model_dir, synthetic_csv):
    """Another run of the same task, another seed: a different model of the same classes (ensembles)."""
    from budgetlora.training.loop import train

    out = tmp_path_factory.mktemp("runs") / "seed7"
    train(tiny_config(tiny_model_dir, synthetic_csv, "train.seed=7", "train.report=false", "train.tracker=none"), out,
          log=lambda message: None)
    return out


def run_cli(*args, cwd=None):
    """Run `python -m budgetlora ARGS` in a fresh process; returns CompletedProcess."""
    import subprocess

    return subprocess.run(
        [sys.executable, "-m", "budgetlora", *map(str, args)],
        capture_output=True, text=True, cwd=cwd, env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )


# ---------------------------------------------------------------- NLTK data

SHARED_NLTK = Path(__file__).resolve().parents[2] / "shared" / "data" / "nltk_data"  # ../shared, where there is one
WORDNET_HINT = ("WordNet is not bundled with the tests (11 MB): run `python -m nltk.downloader wordnet`, "
                "or set NLTK_DATA to a folder holding corpora/wordnet.zip")


@pytest.fixture(scope="session")
def nltk_stopwords() -> None:
    """NLTK's stopwords from tests/fixtures/nltk_data, put first on NLTK_DATA (the standard way)."""
    folders = [str(NLTK_FIXTURE), *([str(SHARED_NLTK)] if SHARED_NLTK.is_dir() else []),
               *os.environ.get("NLTK_DATA", "").split(os.pathsep)]
    os.environ["NLTK_DATA"] = os.pathsep.join(dict.fromkeys(f for f in folders if f))


@pytest.fixture(scope="session")
def nltk_wordnet(nltk_stopwords) -> None:
    """WordNet wherever NLTK finds it (NLTK_DATA, ~/nltk_data, ../shared); skipped, saying how to get it, if nowhere."""
    from budgetlora.data.clean import nltk_corpus
    from budgetlora.errors import UserError

    try:
        nltk_corpus("wordnet")
    except UserError:
        pytest.skip(WORDNET_HINT)


def perturbed_model(cfg, label_names):
    """A built model whose every trainable tensor has moved off its initial value, as if trained."""
    from budgetlora.adapters.model import build_model

    model = build_model(cfg, label_names)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()
