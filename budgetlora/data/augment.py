"""Augment: more labelled training rows, by WordNet synonyms or by a generative language model.

Synonyms (EDA-style synonym replacement, NLTK WordNet): in each copy of a row, about `rate` of
its words (at least one) that are not stopwords, protected words or acronyms are replaced by a
random WordNet synonym. Offline, `synonyms_file` writes the copies to a labelled file with a
`source` column (the row each copy came from); at train time `data.synonym_rate` does the same
in memory for the training split only.

Generation (`generate_file`): a causal language model (GPT-2 by default; any causal LM id or
folder) is fine-tuned briefly on unlabelled in-domain text, then continues per-class prompts
into new labelled rows. Lengths follow the training rows' token lengths (per class), sampling
uses a repetition penalty, rows equal to a training row or to each other are dropped, and an
optional trained classifier keeps only rows it assigns to their class with enough confidence.

`training_extras` is what train.py calls: the rows of `data.extra_train` files and the
`data.synonym_rate` copies, for the training split only. Rows whose `source` is a validation
text are dropped, so an augmented copy of a validation row never leaks into training.
"""

from __future__ import annotations

import dataclasses
import math
import re
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .. import files
from .clean import collapse_whitespace, english_stopwords, nltk_corpus
from ..config import DataConfig
from . import AG_NEWS_LABELS, collate, encode_labels, infer_label_names, read_table, tokenize
from ..errors import UserError, first_line

_WORD = re.compile(r"[A-Za-z]+(?:-[A-Za-z]+)*")


# ---------------------------------------------------------------- synonyms (WordNet)


@lru_cache(maxsize=None)
def synonyms(word: str) -> tuple[str, ...]:
    """WordNet synonyms of a lower-case word, in WordNet's order, without the word itself."""
    wordnet = nltk_corpus("wordnet")
    same = {word, wordnet.morphy(word)}  # "comets" -> "comet" is not a synonym
    out = []
    for synset in wordnet.synsets(word):
        for lemma in synset.lemma_names():
            candidate = lemma.replace("_", " ")
            if candidate.lower() not in same and candidate not in out:
                out.append(candidate)
    return tuple(out)


def replace_synonyms(text: str, rate: float, rng: np.random.Generator, protect: frozenset = frozenset()) -> str:
    """One augmented copy of `text`: about `rate` of its words (at least one) swapped for synonyms."""
    stop = english_stopwords()
    words = list(_WORD.finditer(text))
    candidates = [
        m for m in words
        if len(m.group()) > 2 and not m.group().isupper()  # acronyms (NASA, IBM) stay
        and m.group().lower() not in stop and m.group().lower() not in protect and synonyms(m.group().lower())
    ]
    if not candidates:
        return text
    n = min(len(candidates), max(1, round(rate * len(words))))
    chosen = sorted(rng.choice(len(candidates), size=n, replace=False))
    pieces, last = [], 0
    for k in chosen:
        m = candidates[k]
        options = synonyms(m.group().lower())
        new = options[rng.integers(len(options))]
        if m.group()[0].isupper():
            new = new[0].upper() + new[1:]
        pieces += [text[last : m.start()], new]
        last = m.end()
    return "".join(pieces) + text[last:]


def synonym_copies(texts: list[str], rate: float, copies: int, seed: int, protect=()) -> tuple[list[str], list[int]]:
    """`copies` augmented versions of each text; returns (new texts, index of the source text).

    A copy identical to its source (no replaceable word) is left out.
    """
    nltk_corpus("wordnet")  # a missing corpus fails before any row
    protect = frozenset(w.lower() for w in protect or ())
    rng = np.random.default_rng(seed)
    out, source = [], []
    for i, text in enumerate(texts):
        for _ in range(copies):
            new = replace_synonyms(text, rate, rng, protect)
            if new != text:
                out.append(new)
                source.append(i)
    return out, source


def _write_csv(frame: pd.DataFrame, out: Path, overwrite: bool) -> None:
    files.check_new_file(out, overwrite=overwrite, flag="output file")
    files.write_csv(out, frame)


def synonyms_file(source: str, out: str | Path, data_cfg: DataConfig | None = None, *, rate: float = 0.1,
                  copies: int = 1, protect=(), seed: int = 0, overwrite: bool = False,
                  trust_pickle: bool = False) -> pd.DataFrame:
    """Write `copies` synonym-augmented copies of every row of `source` to CSV `out` (text, label, source).

    Append it to training with data.extra_train=OUT; rows whose source is a validation row are
    dropped there, so the copies never leak validation text into training.
    """
    if not 0 < rate <= 1:
        raise UserError(f"--rate {rate}: must be in (0, 1]")
    if copies < 1:
        raise UserError(f"--copies {copies}: must be >= 1")
    data_cfg = data_cfg or DataConfig()
    table = read_table(source, data_cfg, split="train", trust_pickle=trust_pickle)
    texts, index = synonym_copies(table.texts, rate, copies, seed, protect)
    frame = pd.DataFrame({"text": texts, "label": [table.labels[i] for i in index],
                          "source": [table.texts[i] for i in index]})
    _write_csv(frame, Path(out), overwrite)
    return frame


# ---------------------------------------------------------------- extra training rows (train.py)


def _sources(path: str, cfg, trust_pickle: bool) -> list[str] | None:
    """The `source` column of an augmented file (cleaned like the texts), or None when it has none."""
    try:
        return read_table(path, dataclasses.replace(cfg.data, text_column="source", id_column=None),
                          need_labels=False, trust_pickle=trust_pickle).texts
    except UserError as e:
        if "text column 'source' not in" in str(e):
            return None
        raise


def training_extras(cfg, texts: list[str], labels: np.ndarray, train_idx: np.ndarray, val_idx: np.ndarray,
                    label_names: list[str], *, trust_pickle: bool = False, log=print) -> tuple[list[str], np.ndarray]:
    """Rows added to the training split only: data.extra_train files, then data.synonym_rate copies."""
    extra_texts, extra_labels = [], []
    val_texts = {texts[i] for i in val_idx}
    for path in cfg.data.extra_train or ():
        table = read_table(path, cfg.data, split="train", trust_pickle=trust_pickle)
        y = encode_labels(table, label_names)
        keep = np.ones(len(table), dtype=bool)
        sources = _sources(path, cfg, trust_pickle)
        if sources is not None:
            keep = np.array([s not in val_texts for s in sources], dtype=bool)
            if (~keep).any():
                log(f"{path}: {int((~keep).sum())} augmented row(s) of validation rows left out")
        extra_texts += [t for t, k in zip(table.texts, keep) if k]
        extra_labels += y[keep].tolist()
        log(f"{path}: {int(keep.sum())} extra training rows")
    if cfg.data.synonym_rate > 0:
        new, index = synonym_copies([texts[i] for i in train_idx], cfg.data.synonym_rate, cfg.data.synonym_copies,
                                    cfg.train.seed, cfg.data.synonym_protect)
        extra_texts += new
        extra_labels += labels[train_idx][index].tolist()
        log(f"synonym augmentation: {len(new)} extra training rows (rate {cfg.data.synonym_rate:g}, "
            f"{cfg.data.synonym_copies} per row)")
    return extra_texts, np.asarray(extra_labels, dtype=np.int64)


# ---------------------------------------------------------------- generation (causal LM)

# openings of AG News-like articles; any other label set uses openings of its own training rows
AG_NEWS_PROMPTS = {
    "World": ["The prime minister said", "Officials in the capital said", "Rebels attacked",
              "The United Nations", "Troops were sent to", "Voters in the country"],
    "Sports": ["The team won", "In the final minutes of the game,", "The coach said",
               "The striker scored", "The championship", "The quarterback"],
    "Business": ["Shares of the company", "The stock market", "Quarterly profits rose",
                 "The central bank", "Oil prices", "The retailer said"],
    "Sci/Tech": ["Scientists have discovered", "The software company", "A new computer chip",
                 "Researchers said the internet", "The space agency", "The new mobile phone"],
}


def load_prompts(path: str | None, label_names: list[str], texts: list[str], labels: np.ndarray,
                 seed: int = 0) -> dict[str, list[str]]:
    """Prompts per class: a YAML/JSON file {class: [prompt, ...]}, AG News defaults, or row openings."""
    import yaml

    if path:
        try:
            raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise UserError(f"prompts file {path} does not exist; check --prompts") from None
        except yaml.YAMLError:
            raise UserError(f"prompts file {path} is not YAML/JSON; write {{class: [prompt, ...]}}") from None
        if not isinstance(raw, dict):
            raise UserError(f"prompts file {path} must map each class name to a list of prompts")
        prompts = {}
        for key, value in raw.items():
            name = label_names[key] if isinstance(key, int) and 0 <= key < len(label_names) else str(key)
            if name not in label_names:
                raise UserError(f"prompts file {path}: unknown class {key!r}; classes: {', '.join(label_names)}")
            items = [value] if isinstance(value, str) else value
            if not isinstance(items, list) or not items or not all(isinstance(p, str) and p.strip() for p in items):
                raise UserError(f"prompts file {path}: class {name!r} needs a non-empty list of prompt strings")
            prompts[name] = [p.strip() for p in items]
        return prompts
    if sorted(label_names) == sorted(AG_NEWS_LABELS):
        return {name: list(AG_NEWS_PROMPTS[name]) for name in label_names}
    rng = np.random.default_rng(seed)
    prompts = {}
    for k, name in enumerate(label_names):
        rows = np.flatnonzero(labels == k)
        picked = rng.choice(rows, size=min(20, len(rows)), replace=False) if len(rows) else []
        prompts[name] = sorted({" ".join(texts[i].split()[:3]) for i in picked})
    return prompts


def _normal(text: str) -> str:
    return collapse_whitespace(text.lower())


def load_causal_lm(name: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
        model = AutoModelForCausalLM.from_pretrained(name)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot load causal language model {name!r} ({first_line(e)}); give a hub id or a local folder") from None
    if tokenizer.eos_token_id is None:
        raise UserError(f"{name}: its tokenizer has no end-of-text token; use a causal LM such as gpt2")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def finetune_lm(model, tokenizer, texts: list[str], *, steps: int, batch_size: int = 8, lr: float = 5e-5,
                max_length: int = 128, seed: int = 0, log=print) -> list[float]:
    """A few hundred steps of next-token training on in-domain text; returns the losses.

    A plain loop rather than the Trainer: a dozen lines, no output folder or arguments object,
    and it reuses budgetlora's cached tokenisation and dynamic padding.
    """
    eos = tokenizer.eos_token_id
    ids = [np.append(t, eos) for t in tokenize(texts, tokenizer, max_length - 1)]  # learn where texts end
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    device = next(model.parameters()).device
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    losses = []
    for step in range(steps):
        batch = collate(ids, rng.choice(len(ids), size=min(batch_size, len(ids)), replace=False), eos, None)
        inputs = batch.model_inputs(device)
        targets = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)
        loss = model(**inputs, labels=targets).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if step == 0 or (step + 1) % 50 == 0 or step + 1 == steps:
            log(f"language model step {step + 1}/{steps} loss {np.mean(losses[-50:]):.4f}")
    model.eval()
    return losses


@torch.inference_mode()
def generate_for_class(model, tokenizer, prompts: list[str], lengths: np.ndarray, n: int, rng: np.random.Generator,
                       *, batch_size: int = 16, temperature: float = 1.0, top_k: int = 50, top_p: float = 0.95,
                       repetition_penalty: float = 1.2, min_new_tokens: int = 4) -> list[str]:
    """`n` continuations of randomly chosen prompts; each one's total token length is drawn from `lengths`."""
    tokenizer.padding_side = "left"  # a decoder-only model continues from the right end
    device = next(model.parameters()).device
    eos = tokenizer.eos_token_id
    out = []
    for start in range(0, n, batch_size):
        chosen = [prompts[i] for i in rng.integers(len(prompts), size=min(batch_size, n - start))]
        enc = tokenizer(chosen, return_tensors="pt", padding=True).to(device)
        prompt_lengths = enc["attention_mask"].sum(dim=1).tolist()
        budget = [max(min_new_tokens, int(total) - p) for total, p in zip(rng.choice(lengths, size=len(chosen)), prompt_lengths)]
        generated = model.generate(
            **enc, do_sample=True, max_new_tokens=max(budget), temperature=temperature, top_k=top_k, top_p=top_p,
            repetition_penalty=repetition_penalty, pad_token_id=tokenizer.pad_token_id, eos_token_id=eos,
        )
        width = enc["input_ids"].shape[1]
        for prompt, new, limit in zip(chosen, generated[:, width:], budget):
            new = new[:limit].tolist()
            if eos in new:
                new = new[: new.index(eos)]
            out.append(collapse_whitespace(prompt + tokenizer.decode(new, skip_special_tokens=True)))
    return out


class ConfidenceFilter:
    """A trained budgetlora run as a judge: keeps rows it assigns to their own class confidently enough."""

    def __init__(self, run_dir: str | Path, min_confidence: float):
        from .clean import Cleaner
        from ..adapters.model import load_run

        self.model, self.tokenizer, self.cfg, self.label_names = load_run(run_dir)
        self.cleaner = Cleaner.from_config(self.cfg.data)  # the run sees texts as it saw them in training
        self.run_dir, self.min_confidence = run_dir, min_confidence

    def keep(self, texts: list[str], label: str) -> np.ndarray:
        from ..evaluation.metrics import compute_logits, pad_id_of, softmax

        if label not in self.label_names:
            raise UserError(f"classifier {self.run_dir} does not know class {label!r}; use a run trained on the same labels")
        ids = tokenize(self.cleaner.apply(texts), self.tokenizer, self.cfg.model.max_length)
        probs = softmax(compute_logits(self.model, ids, self.cfg.train.eval_batch_size, pad_id_of(self.tokenizer)))
        k = self.label_names.index(label)
        return (probs.argmax(axis=1) == k) & (probs[:, k] >= self.min_confidence)


def _in_domain_lm(model: str, in_domain: list[str], source: str | None, *, steps: int, batch_size: int, lr: float, max_length: int,
                  seed: int, save_model, log):
    """The causal LM, fine-tuned on `in_domain` texts when there are any (saved to `save_model`), in eval mode."""
    lm, tokenizer = load_causal_lm(model)
    lm.to("cuda" if torch.cuda.is_available() else "cpu")
    if in_domain:
        log(f"fine-tuning {model} on {len(in_domain)} texts of {source} for {steps} steps")
        finetune_lm(lm, tokenizer, in_domain, steps=steps, batch_size=batch_size, lr=lr, max_length=max_length,
                    seed=seed, log=log)
        if save_model:
            with files.staged_dir(save_model) as staging:  # the folder appears complete or not at all
                lm.save_pretrained(str(staging))
                tokenizer.save_pretrained(str(staging))
    return lm.eval(), tokenizer


def _class_rows(lm, tokenizer, name: str, prompts: list[str], lengths: np.ndarray, per_class: int, rng, *,
                seen: set, judge, dropped: dict, max_rounds: int, sampling: dict) -> list[str]:
    """Up to `per_class` new rows of class `name`, in rounds: generated, deduplicated against `seen`
    (training rows and rows kept so far), filtered by the classifier `judge` when there is one."""
    kept: list[str] = []
    for _ in range(max_rounds):
        need = per_class - len(kept)
        if need <= 0:
            break
        fresh = []
        for text in generate_for_class(lm, tokenizer, prompts, lengths, math.ceil(need * 1.25) + 1, rng, **sampling):
            key = _normal(text)
            if not key or key in seen:
                dropped["duplicate"] += 1
                continue
            seen.add(key)
            fresh.append(text)
        if judge is not None and fresh:
            keep = judge.keep(fresh, name)
            dropped["confidence"] += int((~keep).sum())
            fresh = [t for t, ok in zip(fresh, keep) if ok]
        kept += fresh[:need]
    return kept


def generate_file(
    train: str,
    unlabelled: str | None,
    out: str | Path,
    *,
    model: str = "gpt2",
    prompts: str | None = None,
    per_class: int = 100,
    steps: int = 200,
    batch_size: int = 8,
    lr: float = 5e-5,
    max_length: int = 128,
    temperature: float = 1.0,
    top_k: int = 50,
    top_p: float = 0.95,
    repetition_penalty: float = 1.2,
    classifier: str | None = None,
    min_confidence: float = 0.0,
    max_rounds: int = 5,
    seed: int = 0,
    data_cfg: DataConfig | None = None,
    trust_pickle: bool = False,
    overwrite: bool = False,
    save_model: str | Path | None = None,
    log=print,
) -> pd.DataFrame:
    """Fine-tune `model` on `unlabelled` texts, generate `per_class` new rows per class, write CSV (text, label)."""
    out = files.check_new_file(out, overwrite=overwrite)  # before the LM is trained, not after
    if per_class < 1 or steps < 0 or not 0 <= min_confidence <= 1 or repetition_penalty <= 0:
        raise UserError("--per-class must be >= 1, --steps >= 0, --min-confidence in [0, 1], --repetition-penalty > 0")
    data_cfg = data_cfg or DataConfig()
    table = read_table(train, data_cfg, split="train", trust_pickle=trust_pickle)
    label_names = infer_label_names(table, data_cfg.label_names)
    labels = encode_labels(table, label_names)
    class_prompts = load_prompts(prompts, label_names, table.texts, labels, seed)

    in_domain = (read_table(unlabelled, data_cfg, split="test", need_labels=False, trust_pickle=trust_pickle).texts
                 if unlabelled and steps > 0 else [])
    lm, tokenizer = _in_domain_lm(model, in_domain, unlabelled, steps=steps, batch_size=batch_size, lr=lr, max_length=max_length,
                                  seed=seed, save_model=save_model, log=log)
    judge = ConfidenceFilter(classifier, min_confidence) if classifier else None
    if judge is not None and set(class_prompts) - set(judge.label_names):
        raise UserError(f"classifier {classifier} has classes {', '.join(judge.label_names)}, not "
                        f"{', '.join(sorted(set(class_prompts) - set(judge.label_names)))}; use a run trained on these labels")

    # total lengths per class, in the LM's tokens, capped by what the model can hold
    lengths = np.array([len(t) for t in tokenize(table.texts, tokenizer, max_length)])
    seen = {_normal(t) for t in table.texts}  # no copy of a training row, no row twice
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    sampling = dict(temperature=temperature, top_k=top_k, top_p=top_p, repetition_penalty=repetition_penalty)
    rows, dropped = [], {"duplicate": 0, "confidence": 0}
    for k, name in enumerate(label_names):
        if name not in class_prompts:
            continue
        class_lengths = lengths[labels == k] if (labels == k).any() else lengths
        kept = _class_rows(lm, tokenizer, name, class_prompts[name], class_lengths, per_class, rng,
                           seen=seen, judge=judge, dropped=dropped, max_rounds=max_rounds, sampling=sampling)
        if len(kept) < per_class:
            log(f"class {name}: only {len(kept)} of {per_class} rows after {max_rounds} rounds")
        rows += [(t, name) for t in kept]
    frame = pd.DataFrame(rows, columns=["text", "label"])
    _write_csv(frame, out, overwrite)
    log(f"wrote {len(frame)} generated rows to {out} (dropped: {dropped['duplicate']} duplicates, "
        f"{dropped['confidence']} below the classifier's confidence)")
    return frame
