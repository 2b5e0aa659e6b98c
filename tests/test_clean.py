"""Cleaning (data.clean), length filtering (data.length_filter) and `budgetlora data inspect`."""

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from budgetlora.data.clean import Cleaner, length_filter, resolve_steps
from budgetlora.config import load_config
from budgetlora.data import read_table
from budgetlora.errors import UserError

from .conftest import run_cli, synthetic_frame, tiny_config

STANDARD = Cleaner(resolve_steps(["standard"]))


@pytest.mark.parametrize("raw, clean", [
    # AG News's broken entities: the "&" was lost (often replaced by a space)
    ("the communist nation #39;s Foreign Ministry", "the communist nation's Foreign Ministry"),
    ("he quot;misrepresented quot; intelligence", 'he "misrepresented" intelligence'),
    ("with immediate effect, quot; Blackburn said", 'with immediate effect," Blackburn said'),
    ("IE #39;worm #39; targets", "IE 'worm' targets"),
    ("Johnson amp; Johnson", "Johnson & Johnson"),
    ("physiology #151;but no one", "physiology \u2014but no one"),
    # real entities, double escapes, tags
    ("boycott of January elections because of &lt;b&gt;...&lt;/b&gt; A powerful group",
     "boycott of January elections because of ... A powerful group"),
    ("Hollinger Inc. &lt;A HREF=\"http://www.investor.reuters.com/FullQuote.aspx?ticker=HLGc.TO\"&gt;HLGc.TO&lt;/A&gt;, to",
     "Hollinger Inc. HLGc.TO , to"),
    ("caf&amp;eacute; &amp;amp; more", "caf\u00e9 & more"),
    # backslashes: escaped symbols and lost line breaks
    ("for more than \\$24 billion", "for more than $24 billion"),
    ("Astronomers \\have pieced together", "Astronomers have pieced together"),
    ("Search Is Out In Beta\\\\As expected", "Search Is Out In Beta As expected"),
    # URLs and whitespace
    ("acquire www.yellowpages.com today, see https://example.org/a?b=1 now", "acquire today, see now"),
    ("  many \t spaces\n here ", "many spaces here"),
])
def test_standard_cleaning(raw, clean):
    assert STANDARD(raw) == clean


def test_steps_run_in_a_fixed_order_and_unknown_steps_are_refused():
    assert resolve_steps(["whitespace", "html"]) == ("html", "whitespace")
    assert resolve_steps(["standard", "lowercase"]) == ("html", "tags", "urls", "escapes", "lowercase", "whitespace")
    assert resolve_steps(None) == ()
    with pytest.raises(UserError, match="data.clean: unknown step 'htlm'"):
        resolve_steps(["htlm"])


def test_stopwords_and_punctuation(nltk_stopwords):
    full = Cleaner(resolve_steps(["standard", "stopwords", "punctuation", "lowercase"]))
    assert full("The U.S. said it #39;s on the way, quot;soon quot;!") == "us said way soon"
    assert Cleaner(("stopwords", "whitespace"))("What is the Score of the match") == "Score match"


def test_config_keys_are_validated():
    cfg = load_config("r6-qkv-a24", ["data.clean=standard,stopwords", "data.length_filter=[1, 99]"])
    assert cfg.data.clean == ["standard", "stopwords"] and cfg.data.length_filter == [1.0, 99.0]
    assert "clean:" in cfg.to_yaml() and "distill:" in cfg.to_yaml()
    with pytest.raises(UserError, match="data.clean: unknown step 'bogus'"):
        load_config("r6-qkv-a24", ["data.clean=bogus"])
    with pytest.raises(UserError, match="data.length_filter"):
        load_config("r6-qkv-a24", ["data.length_filter=[99, 1]"])
    with pytest.raises(UserError, match="data.length_filter"):
        load_config("r6-qkv-a24", ["data.length_filter=[5]"])


def test_read_table_applies_the_configured_cleaning(tmp_path):
    path = tmp_path / "dirty.csv"
    pd.DataFrame({"text": ["Stocks #39; rally &lt;b&gt;now&lt;/b&gt;", "plain   text"], "label": [0, 1]}).to_csv(path, index=False)
    assert read_table(str(path), load_config("r6-qkv-a24", []).data).texts[0] == "Stocks #39; rally &lt;b&gt;now&lt;/b&gt;"
    cleaned = read_table(str(path), load_config("r6-qkv-a24", ["data.clean=standard"]).data).texts
    assert cleaned == ["Stocks' rally now", "plain text"]


def test_length_filter_keeps_rows_within_the_percentiles():
    lengths = np.arange(1, 101)  # 1..100
    keep = length_filter(lengths, [1, 99])
    lo, hi = np.percentile(lengths, [1, 99])  # 1.99 and 99.01
    assert keep.sum() == 98 and not keep[0] and not keep[-1]
    assert (lengths[keep] >= lo).all() and (lengths[keep] <= hi).all()


def _dirty(text: str) -> str:
    """The same words, with AG News-style damage that `standard` cleaning undoes."""
    first, rest = text.split(" ", 1)
    return f"&lt;b&gt;{first}&lt;/b&gt;   {rest} \\ http://example.com/x"


def test_cleaning_is_stored_with_the_run_and_applied_by_evaluate_and_predict(tmp_path, tiny_model_dir):
    from budgetlora import evaluate_run, predict_file, train

    frame = synthetic_frame(n=200, seed=3)
    # varied lengths (so that the 10-90 percentile filter drops rows at both ends), half of them dirty
    frame["text"] = [t + " today" * (i % 40) for i, t in enumerate(frame["text"])]
    frame["text"] = [_dirty(t) if i % 2 else t for i, t in enumerate(frame["text"])]
    frame.to_csv(tmp_path / "train.csv", index=False)
    cfg = tiny_config(tiny_model_dir, tmp_path / "train.csv", "data.clean=[standard]", "data.length_filter=[10, 90]",
                      "train.max_steps=3", "train.eval_every=3", "data.val_size=40")
    metrics = train(cfg, tmp_path / "run", log=lambda m: None)
    saved = load_config(tmp_path / "run" / "config.yaml")
    assert saved.data.clean == ["standard"] and saved.data.length_filter == [10.0, 90.0]
    # training rows only: 160 rows before the filter, validation untouched
    assert metrics["val_rows"] == 40 and 110 <= metrics["train_rows"] <= 150

    held_out = synthetic_frame(n=40, seed=4)
    held_out.to_csv(tmp_path / "clean.csv", index=False)
    held_out.assign(text=[_dirty(t) for t in held_out["text"]]).to_csv(tmp_path / "dirty.csv", index=False)
    on_clean = evaluate_run(tmp_path / "run", str(tmp_path / "clean.csv"))
    on_dirty = evaluate_run(tmp_path / "run", str(tmp_path / "dirty.csv"))
    assert on_dirty["loss"] == pytest.approx(on_clean["loss"], abs=1e-6)
    p_clean = predict_file(tmp_path / "run", str(tmp_path / "clean.csv"), tmp_path / "a.csv", probabilities=True)
    p_dirty = predict_file(tmp_path / "run", str(tmp_path / "dirty.csv"), tmp_path / "b.csv", probabilities=True)
    np.testing.assert_allclose(p_dirty.filter(like="prob_").to_numpy(), p_clean.filter(like="prob_").to_numpy(), atol=1e-6)
    # without the stored cleaning the dirty texts give other probabilities (the check above can fail)
    raw = evaluate_run(tmp_path / "run", str(tmp_path / "dirty.csv"), data_overrides=["data.clean="])
    assert abs(raw["loss"] - on_clean["loss"]) > 1e-5  # 10x the tolerance of the equalities above


def test_data_inspect(tmp_path, tokenizer_dir):
    path = tmp_path / "news.csv"
    pd.DataFrame({"text": ["Stocks #39; rally", "Team wins &lt;b&gt;cup&lt;/b&gt;", "plain words here ok"],
                  "label": ["money", "sports", "money"]}).to_csv(path, index=False)
    result = run_cli("data", "inspect", path, "--model", tokenizer_dir, "--json", "--set", "data.clean=standard")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["rows"] == 3 and report["classes"]["money"]["rows"] == 2
    assert report["cleaning"]["rows_changed"] == 2 and report["cleaning"]["configured"]
    assert report["cleaning"]["examples"][1]["after"] == "Team wins cup"
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    shortest = min(len(tok(t)["input_ids"]) for t in ["Stocks' rally", "Team wins cup", "plain words here ok"])
    assert report["tokens"]["min"] == shortest  # counted after cleaning, special tokens included
    text = run_cli("data", "inspect", path, "--model", tokenizer_dir)
    assert "before: Team wins &lt;b&gt;cup&lt;/b&gt;" in text.stdout and "money" in text.stdout


def test_missing_nltk_data_is_a_clear_error(tmp_path):
    import nltk

    empty = tmp_path / "nltk_empty"
    empty.mkdir()
    found_elsewhere = [p for p in nltk.data.path if os.path.isdir(os.path.join(p, "corpora", "stopwords"))
                       or os.path.isfile(os.path.join(p, "corpora", "stopwords.zip"))]
    ours = set(os.environ.get("NLTK_DATA", "").split(os.pathsep))  # the tests' own folders, replaced below
    if any(p not in ours for p in found_elsewhere):
        pytest.skip("NLTK stopwords are installed system-wide here, so they cannot be missing")
    path = tmp_path / "t.csv"
    pd.DataFrame({"text": ["the cat sat"], "label": [0]}).to_csv(path, index=False)
    env = {**os.environ, "NLTK_DATA": str(empty), "HOME": str(tmp_path), "PYTHONWARNINGS": "ignore"}
    result = subprocess.run([sys.executable, "-m", "budgetlora", "augment", "synonyms", str(path), str(tmp_path / "o.csv")],
                            capture_output=True, text=True, env=env)
    assert result.returncode == 2
    assert "nltk.downloader stopwords wordnet" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "o.csv").exists()
