"""Shift: how far an unlabelled target set (a competition's test file) is from the training data.

`budgetlora data shift --train FILE --target FILE [--run RUN]` prints this; `shift_report`
returns it as a JSON-ready dict, and `--save` stores it as RUN/shift.json, which the run report
shows as its "Shift" section. It compares the two sets five ways:

* token lengths: percentiles of both sides (untruncated, special tokens included), the share over
  `model.max_length`, a two-sample Kolmogorov-Smirnov statistic, a histogram for the report,
  and the tokenizer's unknown-token rate and tokens per word (fragmentation) on each side;
* vocabulary: words of each side (scikit-learn's CountVectorizer: lower-cased runs of 2+ letters),
  the out-of-vocabulary rate (target word occurrences, and distinct target words, never seen in
  train), the commonest such words (stopwords aside), and the share of target rows that occur
  verbatim in train;
* over-represented words each way: the log-odds ratio with an informative Dirichlet prior and
  its z-score (Monroe, Colaresi and Quinn 2008, "Fightin' words"), words with z >= 1.96 seen 5+
  times, NLTK's English stopwords left out;
* a domain-classifier two-sample test on frozen features: at most `max_rows` rows per side,
  mean-pooled last hidden states of a frozen encoder (`model` when given, else the run's
  `model.name`, else the config's default), scikit-learn's LogisticRegression scored by out-of-fold ROC AUC
  (stratified 5-fold CV; rows with the same text share a fold, so a duplicated row cannot tell
  its own side); 0.5 = the sets cannot be told apart, 1.0 = separable. The 95% interval is a
  stratified bootstrap over rows of the out-of-fold scores; the target rows the classifier finds
  least like train are listed;
* with a run: its predicted class mix on the target rows against the training prior (labels of
  the --train rows, else of its validation rows), mean confidence (top probability) and entropy
  on target against the run's validation rows (val_predictions.csv, predicted again here), the
  share of rows below a confidence threshold, and an accuracy estimate for the target by average
  thresholded confidence (ATC: Garg et al., ICLR 2022).

Written by hand, because no installed library does them: the log-odds z-scores (ten lines of
numpy) and the bootstrap of the AUC (ranks from scipy).
"""

from __future__ import annotations

import hashlib
import math
import sys
from pathlib import Path

import numpy as np

from ..errors import UserError, warn
from .inspect import PERCENTILES

MAX_ROWS = 2000  # rows per side for the domain classifier and the run's predictions
LOW_CONFIDENCE = 0.5
FOLDS = 5
BOOTSTRAP = 1000
TOP_WORDS = 15
MIN_WORD_COUNT = 5  # a word listed as over-represented occurs at least this often in both sets together
MIN_Z = 1.96  # ... and its log-odds z-score is at least this (two-sided 5%, not corrected for the many words)
WORD_PATTERN = r"(?u)\b[^\W\d_]{2,}\b"  # 2+ letters: no numbers, no single letters
EXAMPLES = 5
EXAMPLE_CHARS = 200
HIST_BINS = 30
SHIFT_FILE = "shift.json"  # in a run folder: the report's Shift section


def shift_report(train: str, target: str, *, run: str | Path | None = None, model: str | None = None,
                 data_overrides: list[str] | tuple = (), max_rows: int = MAX_ROWS,
                 low_confidence: float = LOW_CONFIDENCE, seed: int = 0, trust_pickle: bool = False,
                 progress: bool = True) -> dict:
    """Compare the `target` file's texts with the `train` file's (see the module docstring).

    Both files are read as the run reads text (its config's columns and cleaning) when `run` is
    given, else with the default data settings; `data_overrides` are `data.KEY=VALUE` strings.
    `max_rows` (0: all) bounds the rows per side that go through a model. Returns a JSON-ready
    dict; bad input is a UserError."""
    from . import read_table
    from ..adapters.model import load_tokenizer

    if max_rows < 0:
        raise UserError(f"max_rows must be 0 (all rows) or more, got {max_rows}")
    if not 0 <= low_confidence <= 1:
        raise UserError(f"the low-confidence threshold is a probability in [0, 1], got {low_confidence}")
    cfg = _reading_config(run, data_overrides)
    train_table = read_table(train, cfg.data, need_labels=False, trust_pickle=trust_pickle)
    target_table = read_table(target, cfg.data, split="test", need_labels=False, trust_pickle=trust_pickle)
    for table, flag in ((train_table, "--train"), (target_table, "--target")):
        if len(table) == 0:
            raise UserError(f"{table.source} has no rows; give {flag} a file with texts in column "
                            f"{cfg.data.text_column!r}")
    predictor = prior = None
    if run is not None:
        from ..deploy.predictor import load_predictor

        predictor = load_predictor(run)
        prior = _training_prior(train_table, predictor.label_names)
    model_name = model or cfg.model.name
    tokenizer = load_tokenizer(model_name if model else (cfg.model.tokenizer or cfg.model.name))

    rng = np.random.default_rng(seed)
    train_rows, target_rows = _subsample(len(train_table), max_rows, rng), _subsample(len(target_table), max_rows, rng)
    report = {
        "train": {"source": str(train), "rows": len(train_table)},
        "target": {"source": str(target), "rows": len(target_table)},
        "settings": {"model": str(model_name), "max_length": cfg.model.max_length, "max_rows": max_rows,
                     "seed": seed, "low_confidence": low_confidence, "run": str(run) if run is not None else None},
    }
    report["tokens"] = _token_lengths(train_table.texts, target_table.texts, tokenizer, cfg.model.max_length)
    stopwords = _stopwords()
    report["vocabulary"], counts = _vocabulary(train_table.texts, target_table.texts, stopwords[0])
    report["words"] = _over_represented(*counts, stopwords)
    report["domain"] = _domain_test([train_table.texts[i] for i in train_rows],
                                    [target_table.texts[i] for i in target_rows], model_name, tokenizer,
                                    cfg.model.max_length, seed=seed, progress=progress)
    if predictor is not None:
        report["predictions"] = _run_predictions(predictor, Path(run), prior,
                                                 [target_table.texts[i] for i in target_rows],
                                                 max_rows, low_confidence, rng, progress=progress)
    return report


# ---------------------------------------------------------------- inputs


def _reading_config(run, data_overrides):
    """The config that says how to read the files: the run's (columns, cleaning), else the defaults."""
    from ..config import load_config, with_data_overrides

    if run is None:
        return with_data_overrides(load_config(None), data_overrides)
    from ..deploy.predictor import is_run
    from ..evaluation.predict import reading_config

    if not Path(run).exists():
        raise UserError(f"--run {run} does not exist; give the --out folder of `budgetlora train`")
    if not is_run(Path(run)):
        raise UserError(f"--run {run} is not a budgetlora run folder (no config.yaml + adapter/); give the --out "
                        "folder of `budgetlora train`")
    return reading_config(run, data_overrides)


def _subsample(n: int, max_rows: int, rng: np.random.Generator) -> np.ndarray:
    """Row numbers of a seeded sample of at most `max_rows` of `n` rows (0: all), in file order."""
    if not max_rows or n <= max_rows:
        return np.arange(n)
    return np.sort(rng.choice(n, size=max_rows, replace=False))


# ---------------------------------------------------------------- lengths and vocabulary


def _histogram(a: np.ndarray, b: np.ndarray, edges: np.ndarray) -> dict:
    """Shares of `a` and `b` in the bins of `edges` (values past the last edge go to the last bin)."""
    def shares(x):
        counts, _ = np.histogram(np.clip(x, edges[0], edges[-1]), bins=edges)
        return (counts / max(len(x), 1)).tolist()

    return {"edges": edges.tolist(), "a": shares(a), "b": shares(b)}


def _token_lengths(train: list[str], target: list[str], tokenizer, max_length: int) -> dict:
    """Length percentiles per side (untruncated, special tokens included), the tokenizer's
    unknown-token rate and tokens per whitespace word (special tokens left out), a KS test."""
    from scipy.stats import ks_2samp

    from .tokens import tokenize

    out = {"tokenizer": str(getattr(tokenizer, "name_or_path", "")), "max_length": max_length}
    special, unk = tokenizer.num_special_tokens_to_add(), tokenizer.unk_token_id
    sides = {}
    for name, texts in (("train", train), ("target", target)):
        ids = tokenize(texts, tokenizer, 1_000_000)
        lengths = sides[name] = np.array([len(row) for row in ids])
        tokens = max(int(lengths.sum()) - special * len(ids), 1)
        unknown = sum(int((row == unk).sum()) for row in ids) if unk is not None else 0
        out[name] = {"mean": float(lengths.mean()), "min": int(lengths.min()), "max": int(lengths.max()),
                     "percentiles": {str(p): float(np.percentile(lengths, p)) for p in PERCENTILES},
                     "over_max_length": float((lengths > max_length).mean()),
                     "unk_rate": unknown / tokens,
                     "tokens_per_word": tokens / max(sum(len(t.split()) for t in texts), 1)}
    ks = ks_2samp(sides["train"], sides["target"])
    out["ks"] = {"statistic": float(ks.statistic), "p_value": float(ks.pvalue)}
    top = max(float(np.percentile(np.concatenate(list(sides.values())), 99)), 2.0)
    hist = _histogram(sides["train"], sides["target"], np.linspace(0, math.ceil(top), HIST_BINS + 1))
    out["histogram"] = {"edges": hist["edges"], "train": hist["a"], "target": hist["b"]}
    return out


def _vocabulary(train: list[str], target: list[str], stop: frozenset) -> tuple[dict, tuple]:
    from sklearn.feature_extraction.text import CountVectorizer

    vectorizer = CountVectorizer(lowercase=True, token_pattern=WORD_PATTERN)
    try:
        matrix = vectorizer.fit_transform(list(train) + list(target))
        words = vectorizer.get_feature_names_out()
    except ValueError:  # no word of 2+ letters anywhere
        matrix, words = None, np.array([], dtype=object)
    if matrix is not None:
        train_counts = np.asarray(matrix[: len(train)].sum(axis=0)).ravel()
        target_counts = np.asarray(matrix[len(train):].sum(axis=0)).ravel()
    else:
        train_counts = target_counts = np.zeros(0, dtype=np.int64)
    unseen = (train_counts == 0) & (target_counts > 0)
    listed = unseen & np.array([w not in stop for w in words], dtype=bool)  # the rates count stopwords too
    order = np.argsort(-target_counts * listed, kind="stable")[: min(TOP_WORDS, int(listed.sum()))]
    seen_texts = set(train)
    out = {
        "train_words": int((train_counts > 0).sum()),
        "target_words": int((target_counts > 0).sum()),
        "oov_rate": float(target_counts[unseen].sum() / max(target_counts.sum(), 1)),
        "oov_type_rate": float(unseen.sum() / max((target_counts > 0).sum(), 1)),
        "oov_top": [[str(words[i]), int(target_counts[i])] for i in order],
        "target_rows_in_train": float(np.mean([t in seen_texts for t in target])),
    }
    return out, (words, train_counts, target_counts)


def _stopwords() -> tuple[frozenset, str]:
    """NLTK's English stopwords; scikit-learn's list (with a warning) where NLTK's data is missing."""
    from .clean import english_stopwords

    try:
        return english_stopwords(), "nltk"
    except UserError as e:
        from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

        warn(f"{e}; using scikit-learn's English stopwords instead")
        return frozenset(ENGLISH_STOP_WORDS), "sklearn"


def log_odds_z(counts_a: np.ndarray, counts_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(log-odds ratio of each word in a against b, its z-score): Monroe et al. 2008, eq. 16 and
    20, with an informative Dirichlet prior from both sides: alpha_w = the mean of the word's
    relative frequencies in a and in b, times the smaller side's word count (so neither side's
    size dominates, and a word found on one side only is not pushed down the way a tiny uniform
    prior pushes it). Positive = more frequent in a; rank by z, which weighs in the counts."""
    counts_a, counts_b = counts_a.astype(np.float64), counts_b.astype(np.float64)
    n_a, n_b = counts_a.sum(), counts_b.sum()
    prior = min(n_a, n_b) * (counts_a / max(n_a, 1) + counts_b / max(n_b, 1)) / 2
    prior_total = prior.sum()
    a, b = counts_a + prior, counts_b + prior
    delta = np.log(a / (n_a + prior_total - a)) - np.log(b / (n_b + prior_total - b))
    return delta, delta / np.sqrt(1.0 / a + 1.0 / b)


def _over_represented(words: np.ndarray, train_counts: np.ndarray, target_counts: np.ndarray,
                      stopwords: tuple[frozenset, str]) -> dict:
    stop, source = stopwords
    keep = np.array([w not in stop for w in words], dtype=bool) & (train_counts + target_counts >= MIN_WORD_COUNT)
    out = {"stopwords": source, "min_count": MIN_WORD_COUNT, "min_z": MIN_Z, "target": [], "train": []}
    if not keep.any() or not train_counts.sum() or not target_counts.sum():  # a side without words: no odds
        return out
    words, train_counts, target_counts = words[keep], train_counts[keep], target_counts[keep]
    delta, z = log_odds_z(target_counts, train_counts)
    for side, sign in (("target", 1), ("train", -1)):
        for i in np.argsort(-sign * z, kind="stable")[:TOP_WORDS]:
            if sign * z[i] < MIN_Z:
                break
            out[side].append({"word": str(words[i]), "z": float(sign * z[i]), "log_odds": float(sign * delta[i]),
                              "target_count": int(target_counts[i]), "train_count": int(train_counts[i])})
    return out


# ---------------------------------------------------------------- domain classifier


def frozen_features(texts: list[str], model_name: str, tokenizer, max_length: int, *, batch_size: int = 64,
                    progress: bool = False) -> np.ndarray:
    """(rows, hidden) float32: the frozen encoder's last hidden states, mean-pooled over the
    attention mask, texts truncated at `max_length` tokens (at most what the model's positions hold)."""
    import torch
    from tqdm.auto import tqdm
    from transformers import AutoModel

    from ..adapters.model import max_input_length, quiet_transformers
    from ..evaluation.metrics import pad_id_of
    from ..errors import first_line
    from ..hardware import inference_device
    from .batching import eval_batches
    from .tokens import tokenize

    quiet_transformers()
    max_length = min(max_length, max_input_length(model_name) or max_length)  # what its positions hold
    try:
        encoder = AutoModel.from_pretrained(model_name, dtype=torch.float32)
    except Exception as e:  # noqa: BLE001 -- OSError, ValueError, HTTP errors: all mean "cannot load"
        raise UserError(f"cannot load model {model_name!r} ({first_line(e)}); give --model a hub id that is reachable "
                        "or a local folder with config.json") from None
    device = inference_device()
    encoder.to(device).eval()
    ids = tokenize(texts, tokenizer, max_length)
    out = np.zeros((len(texts), encoder.config.hidden_size), dtype=np.float32)
    bar = tqdm(total=len(ids), desc="features", unit="row", leave=False, disable=not (progress and sys.stderr.isatty()))
    with torch.inference_mode():
        for batch in eval_batches(ids, batch_size, pad_id_of(tokenizer)):
            inputs = batch.model_inputs(device)
            hidden = encoder(**inputs).last_hidden_state.float()
            mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            out[batch.index] = ((hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)).cpu().numpy()
            bar.update(len(batch.index))
    bar.close()
    return out


def auc_by_ranks(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """ROC AUC of each row of `scores` (rows x n) against 0/1 `labels` of the same shape, from
    midranks (the Mann-Whitney statistic: ties count one half), as roc_auc_score gives."""
    from scipy.stats import rankdata

    scores, labels = np.atleast_2d(scores), np.atleast_2d(labels).astype(bool)
    ranks = rankdata(scores, axis=1)
    positives = labels.sum(axis=1)
    negatives = labels.shape[1] - positives
    return ((ranks * labels).sum(axis=1) - positives * (positives + 1) / 2) / (positives * negatives)


def _verdict(auc: float, low: float) -> str:
    if low <= 0.5:
        return "no detectable shift"
    for limit, words in ((0.6, "slight shift"), (0.75, "moderate shift"), (0.9, "strong shift")):
        if auc < limit:
            return words
    return "very strong shift (the sets are almost separable)"


def _domain_test(train: list[str], target: list[str], model_name: str, tokenizer, max_length: int, *,
                 seed: int, progress: bool) -> dict:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedGroupKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    texts = list(train) + list(target)
    y = np.r_[np.zeros(len(train), dtype=int), np.ones(len(target), dtype=int)]
    groups = np.array([int(hashlib.blake2b(t.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest(), 16)
                       for t in texts], dtype=np.uint64)
    folds = min(FOLDS, len(train), len(target), len(np.unique(groups)))
    base = {"model": str(model_name), "rows": {"train": len(train), "target": len(target)}, "folds": folds}
    if folds < 2:
        return {**base, "skipped": "too few rows (at least 2 distinct texts per side are needed)"}
    features = frozen_features(texts, model_name, tokenizer, max_length, progress=progress)
    classifier = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, class_weight="balanced"))
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    scores = cross_val_predict(classifier, features, y, groups=groups, cv=splitter, method="predict_proba")[:, 1]
    auc = float(auc_by_ranks(scores, y)[0])
    fold_auc = []
    for _, test in splitter.split(features, y, groups):
        if 0 < y[test].sum() < len(test):
            fold_auc.append(float(auc_by_ranks(scores[test], y[test])[0]))
    rng = np.random.default_rng(seed)
    where = [np.flatnonzero(y == side) for side in (0, 1)]
    draws = np.concatenate([rng.choice(idx, size=(BOOTSTRAP, len(idx))) for idx in where], axis=1)
    boot = auc_by_ranks(scores[draws], y[draws])
    low, high = (float(v) for v in np.quantile(boot, [0.025, 0.975]))
    ranked = np.argsort(-scores[len(train):], kind="stable")[:EXAMPLES]
    examples = [{"text": _cut(target[i]), "p_target": float(scores[len(train) + i])} for i in ranked]
    return {**base, "auc": auc, "ci95": [low, high], "fold_auc": fold_auc,
            "classifier": "StandardScaler + LogisticRegression (class_weight=balanced), out-of-fold",
            "verdict": _verdict(auc, low), "examples": examples}


def _cut(text: str) -> str:
    return text if len(text) <= EXAMPLE_CHARS else text[:EXAMPLE_CHARS] + "..."


# ---------------------------------------------------------------- with a run


def _confidence_stats(probs: np.ndarray, threshold: float) -> dict:
    confidence = probs.max(axis=1)
    entropy = -(probs * np.log(np.clip(probs, 1e-12, 1.0))).sum(axis=1)
    return {"rows": int(len(probs)), "mean_confidence": float(confidence.mean()),
            "mean_entropy": float(entropy.mean()), "low_confidence_share": float((confidence < threshold).mean())}


def _training_prior(table, label_names: list[str]) -> tuple[np.ndarray, str] | None:
    """(class shares, where from) of the training file's labels, or None where it has none (or
    labels the run does not know: said in a warning; the validation rows' classes are used)."""
    from .labels import encode_labels

    if table.labels is None:
        return None
    try:
        labels = encode_labels(table, label_names)
    except UserError as e:
        warn(f"{e}; the training prior comes from the run's validation rows instead")
        return None
    return np.bincount(labels, minlength=len(label_names)) / len(labels), f"labels of {table.source}"


def _estimated_mix(run: Path, names: list[str], target_logits: np.ndarray) -> np.ndarray | None:
    """The target's class mix by EM (evaluation/label_shift.py) from the run's training mix; None
    for a run that does not record it (trained before metrics.json had train_label_counts)."""
    from ..evaluation.label_shift import estimate_target_prior, run_training_prior

    source = run_training_prior(run, names)
    if source is None or not len(target_logits):
        return None
    return estimate_target_prior(target_logits, source)


def _run_predictions(predictor, run: Path, train_prior, target: list[str], max_rows: int, threshold: float,
                     rng: np.random.Generator, *, progress: bool) -> dict:
    import pandas as pd

    from .. import rundir
    from ..evaluation.metrics import predictor_logits, softmax

    names = list(predictor.label_names)
    k = len(names)
    target_logits = predictor_logits(predictor, target, progress=progress)
    target_probs = softmax(target_logits)
    out = {"label_names": names, "target": _confidence_stats(target_probs, threshold)}
    estimated = _estimated_mix(run, names, target_logits)
    mix = np.bincount(target_probs.argmax(axis=1), minlength=k) / len(target_probs)
    prior, prior_source = train_prior if train_prior is not None else (None, None)
    val_path = run / rundir.VAL_PREDICTIONS
    val_probs = None
    if val_path.is_file():
        val = pd.read_csv(val_path, keep_default_na=False)
        val = val.iloc[_subsample(len(val), max_rows, rng)]
        val_probs = softmax(predictor_logits(predictor, val["text"].astype(str).tolist(), progress=progress))
        correct = np.array([names[p] == str(t) for p, t in zip(val_probs.argmax(axis=1), val["true"])])
        out["validation"] = {**_confidence_stats(val_probs, threshold), "accuracy": float(correct.mean())}
        if prior is None:
            index = {n: i for i, n in enumerate(names)}
            prior = np.bincount([index[str(t)] for t in val["true"] if str(t) in index], minlength=k) / max(len(val), 1)
            prior_source = f"true classes of {val_path.name}"
        confidence = val_probs.max(axis=1)
        cut = float(np.quantile(confidence, 1 - correct.mean())) if correct.mean() < 1 else float(confidence.min())
        out["atc"] = {"threshold": cut, "estimated_target_accuracy": float((target_probs.max(axis=1) > cut).mean()),
                      "validation_accuracy": float(correct.mean())}
    else:
        out["validation"] = None
        out["note"] = f"{val_path} is missing (a run from an older budgetlora): no validation comparison"
    out["class_mix"] = {n: {"target": float(mix[i]), "prior": float(prior[i]) if prior is not None else None,
                            "estimated": float(estimated[i]) if estimated is not None else None}
                        for i, n in enumerate(names)}
    out["prior_source"] = prior_source
    out["class_mix_tvd"] = float(0.5 * np.abs(mix - prior).sum()) if prior is not None else None
    edges = np.linspace(1.0 / k, 1.0, 21)
    hist = _histogram(val_probs.max(axis=1) if val_probs is not None else np.zeros(0), target_probs.max(axis=1), edges)
    out["confidence_histogram"] = {"edges": hist["edges"], "validation": hist["a"] if val_probs is not None else None,
                                   "target": hist["b"]}
    return out


# ---------------------------------------------------------------- output


def summary_rows(report: dict) -> list[tuple[str, str]]:
    """(what, value) lines of a report: the text summary and the run report's Shift table."""
    t, v, d = report["tokens"], report["vocabulary"], report["domain"]

    def lengths(side):
        p = t[side]["percentiles"]
        return (f"p5 {p['5']:g} / p50 {p['50']:g} / p95 {p['95']:g}, mean {t[side]['mean']:.1f}, "
                f"{t[side]['over_max_length']:.1%} over {t['max_length']}")

    rows = [("rows", f"train {report['train']['rows']:,}, target {report['target']['rows']:,}"),
            ("train length (tokens)", lengths("train")),
            ("target length (tokens)", lengths("target")),
            ("length difference", f"Kolmogorov-Smirnov D = {t['ks']['statistic']:.3f} (p = {t['ks']['p_value']:.2g})"),
            ("vocabulary", f"train {v['train_words']:,} words, target {v['target_words']:,}"),
            ("target words never seen in train", f"{v['oov_rate']:.2%} of occurrences, {v['oov_type_rate']:.1%} of "
                                                  "distinct words"),
            ("target rows also in train", f"{v['target_rows_in_train']:.1%}"),
            ("tokenizer: unknown tokens", f"train {t['train']['unk_rate']:.3%}, target {t['target']['unk_rate']:.3%}"),
            ("tokenizer: tokens per word", f"train {t['train']['tokens_per_word']:.2f}, "
                                           f"target {t['target']['tokens_per_word']:.2f}")]
    if "auc" in d:
        rows.append(("domain classifier AUC", f"{d['auc']:.3f} (95% bootstrap {d['ci95'][0]:.3f}-{d['ci95'][1]:.3f}): "
                                              f"{d['verdict']}; {d['rows']['train']:,} + {d['rows']['target']:,} rows, "
                                              f"{d['folds']}-fold, features of {d['model']}"))
    else:
        rows.append(("domain classifier", f"skipped: {d['skipped']}"))
    p = report.get("predictions")
    if p:
        val = p.get("validation")

        def conf(key, fmt):
            both = f"target {format(p['target'][key], fmt)}"
            return both + (f", validation {format(val[key], fmt)}" if val else "")

        rows += [("mean confidence", conf("mean_confidence", ".3f")),
                 ("mean entropy (nats)", conf("mean_entropy", ".3f")),
                 (f"confidence below {report['settings']['low_confidence']:g}", conf("low_confidence_share", ".1%"))]
        if p.get("class_mix_tvd") is not None:
            rows.append(("class mix vs training prior", f"total variation {p['class_mix_tvd']:.3f} "
                                                        f"(prior: {p['prior_source']})"))
        if p.get("atc"):
            rows.append(("estimated target accuracy (ATC)",
                         f"{p['atc']['estimated_target_accuracy']:.1%} (validation accuracy "
                         f"{p['atc']['validation_accuracy']:.1%}, threshold {p['atc']['threshold']:.3f})"))
    return rows


def _word(row: dict) -> str:
    return f"{row['word']} ({row['z']:.1f}; {row['target_count']} vs {row['train_count']})"


def word_rows(report: dict) -> list[list[str]]:
    """Over-represented words side by side: [in target, in train], each "word (z; target vs train count)"."""
    w = report["words"]
    return [[_word(w[side][i]) if i < len(w[side]) else "" for side in ("target", "train")]
            for i in range(max(len(w["target"]), len(w["train"])))]


def format_shift(report: dict) -> str:
    """The text summary `budgetlora data shift` prints."""
    lines = [f"{report['target']['source']} (target) against {report['train']['source']} (train)"]
    width = max(len(k) for k, _ in summary_rows(report))
    lines += [f"  {k:<{width}}  {v}" for k, v in summary_rows(report)]
    v = report["vocabulary"]
    if v["oov_top"]:
        lines.append("commonest target words never seen in train: " + ", ".join(f"{w} ({n})" for w, n in v["oov_top"]))
    w = report["words"]
    lines.append(f"over-represented words (log-odds z-score; target count vs train count; {w['stopwords']} "
                 f"stopwords left out):")
    for side, label in (("target", "in target"), ("train", "in train")):
        shown = ", ".join(_word(r) for r in w[side][:10])
        lines.append(f"  {label:<9} {shown or '(none)'}")
    d = report["domain"]
    if d.get("examples") and d["verdict"] != "no detectable shift":
        lines.append("target rows least like train (domain classifier's probability of target):")
        lines += [f"  {e['p_target']:.2f}  {e['text']}" for e in d["examples"]]
    p = report.get("predictions")
    if p:
        lines.append("predicted class mix on target against the training prior:")
        for name, mix in p["class_mix"].items():
            prior = f"{mix['prior']:6.1%}" if mix["prior"] is not None else "     -"
            estimated = f"  estimated (EM) {mix['estimated']:6.1%}" if mix.get("estimated") is not None else ""
            lines.append(f"  {name:<20} target {mix['target']:6.1%}  prior {prior}{estimated}")
        if any(mix.get("estimated") is not None for mix in p["class_mix"].values()):
            lines.append("  estimated: the target's class mix by EM on the run's probabilities; "
                         "`budgetlora predict --adjust-prior` corrects predictions to it")
        if p.get("note"):
            lines.append(f"  note: {p['note']}")
    return "\n".join(lines)
