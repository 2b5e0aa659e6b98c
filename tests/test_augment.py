"""Synonym augmentation (WordNet), generative augmentation (a tiny random GPT-2), extra training rows."""

import numpy as np
import pandas as pd
import pytest

from budgetlora.errors import UserError

from .conftest import GPT2_TOKENIZER, run_cli, synthetic_frame, tiny_config


# ---------------------------------------------------------------- synonyms


def test_synonym_replacement(nltk_wordnet):
    from budgetlora.data.augment import replace_synonyms, synonym_copies, synonyms

    assert "automobile" in synonyms("car") and "car" not in synonyms("car")
    assert "comet" not in synonyms("comets")  # an inflection is not a synonym
    rng = np.random.default_rng(0)
    text = "The happy dog runs quickly to the big house"
    copy = replace_synonyms(text, 0.2, rng)
    changed = [(a, b) for a, b in zip(text.split(), copy.split()) if a != b]
    assert copy != text and changed
    for old, _ in changed:  # only content words change; stopwords stay
        assert old.lower() not in {"the", "to"}
    # protected words, acronyms and words without synonyms are never replaced
    for _ in range(20):
        out = replace_synonyms("NASA dog happy", 1.0, rng, frozenset({"dog"}))
        assert out.split()[:2] == ["NASA", "dog"]
    texts, source = synonym_copies(["big happy dog", "xyzzy qwrtp"], 0.5, 3, seed=1)
    assert source == [0, 0, 0] and all(t != "big happy dog" for t in texts)
    assert synonym_copies(["big happy dog"], 0.5, 3, seed=1) == synonym_copies(["big happy dog"], 0.5, 3, seed=1)


def test_synonyms_file_and_training_appends_it_without_validation_leaks(nltk_wordnet, tmp_path, tiny_model_dir):
    from budgetlora import train
    from budgetlora.data.augment import synonyms_file
    from budgetlora.data import encode_labels, read_table, split_train_val

    frame = synthetic_frame(n=120, seed=5)
    frame.to_csv(tmp_path / "train.csv", index=False)
    synonyms_file(str(tmp_path / "train.csv"), tmp_path / "aug.csv", rate=0.3, copies=2, protect=["goal"])
    aug = pd.read_csv(tmp_path / "aug.csv")
    assert list(aug.columns) == ["text", "label", "source"]
    assert 120 < len(aug) <= 240 and set(aug["source"]) <= set(frame["text"])
    assert (aug["text"] != aug["source"]).all()
    by_text = dict(zip(frame["text"], frame["label"]))
    assert all(by_text[s] == label for s, label in zip(aug["source"], aug["label"]))
    assert all(("goal" in s.split()) <= ("goal" in t.split()) for s, t in zip(aug["source"], aug["text"]))
    with pytest.raises(UserError, match="already exists"):
        synonyms_file(str(tmp_path / "train.csv"), tmp_path / "aug.csv")

    cfg = tiny_config(tiny_model_dir, tmp_path / "train.csv", f"data.extra_train=[{tmp_path / 'aug.csv'}]",
                      "data.synonym_rate=0.2", "data.synonym_copies=1", "train.max_steps=2", "train.eval_every=2",
                      "data.val_size=20")
    metrics = train(cfg, tmp_path / "run", log=lambda m: None)
    # exactly the augmented rows whose source is a training row are appended, plus on-the-fly copies
    table = read_table(str(tmp_path / "train.csv"), cfg.data)
    labels = encode_labels(table, sorted(set(frame["label"])))
    train_idx, val_idx = split_train_val(labels, 20, cfg.train.seed)
    val_texts = {table.texts[i] for i in val_idx}
    from_file = int((~aug["source"].isin(val_texts)).sum())
    assert from_file < len(aug)  # some rows were copies of validation rows, and were left out
    assert metrics["val_rows"] == 20
    on_the_fly = metrics["train_rows_extra"] - from_file
    assert 0 < on_the_fly <= 100
    assert metrics["train_rows"] == 100 + metrics["train_rows_extra"]


# ---------------------------------------------------------------- generation


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory):
    """A random 2-layer GPT-2 (hidden 32) with the real GPT-2 tokenizer: no GPT-2 weights are needed."""
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    folder = tmp_path_factory.mktemp("tiny-gpt2")
    tokenizer = AutoTokenizer.from_pretrained(str(GPT2_TOKENIZER))
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=128, n_embd=32, n_layer=2, n_head=2,
                        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    GPT2LMHeadModel(config).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


def test_generate_end_to_end(tmp_path, tiny_gpt2_dir, tiny_model_dir):
    """Fine-tune -> per-class prompts -> generate -> dedup -> labelled file -> training appends it."""
    from transformers import AutoTokenizer

    from budgetlora import train
    from budgetlora.data.augment import generate_file

    synthetic_frame(n=80, seed=6).to_csv(tmp_path / "train.csv", index=False)
    synthetic_frame(n=60, seed=7)[["text"]].to_csv(tmp_path / "unlabelled.csv", index=False)
    (tmp_path / "prompts.yaml").write_text("sports: [the team, a goal]\nmoney: [the market]\n"
                                           "tech: [software]\nworld: [the president]\n", encoding="utf-8")
    messages = []
    frame = generate_file(str(tmp_path / "train.csv"), str(tmp_path / "unlabelled.csv"), tmp_path / "gen.csv",
                          model=str(tiny_gpt2_dir), prompts=str(tmp_path / "prompts.yaml"), per_class=6, steps=15,
                          lr=1e-3, max_length=32, seed=0, save_model=tmp_path / "lm", log=messages.append)
    written = pd.read_csv(tmp_path / "gen.csv", keep_default_na=False)
    assert list(written.columns) == ["text", "label"] and len(written) == 24
    assert written["label"].value_counts().to_dict() == {"sports": 6, "money": 6, "tech": 6, "world": 6}
    assert written["text"].is_unique and not set(written["text"]) & set(pd.read_csv(tmp_path / "train.csv")["text"])
    prompts = {"sports": ("the team", "a goal"), "money": ("the market",), "tech": ("software",), "world": ("the president",)}
    assert all(t.startswith(prompts[label]) for t, label in zip(written["text"], written["label"]))
    assert frame["text"].tolist() == written["text"].tolist()
    # the language model was fine-tuned (saved) and its loss fell
    losses = [float(m.rsplit("loss ", 1)[1]) for m in messages if m.startswith("language model step")]
    assert (tmp_path / "lm" / "config.json").is_file() and losses[-1] < losses[0]
    # lengths: at most the longest training row (GPT-2 tokens, new tokens capped) plus decoding slack
    tok = AutoTokenizer.from_pretrained(str(tiny_gpt2_dir))
    longest = max(len(tok(t)["input_ids"]) for t in pd.read_csv(tmp_path / "train.csv")["text"])
    assert max(len(tok(t)["input_ids"]) for t in written["text"]) <= 2 * longest + 4

    cfg = tiny_config(tiny_model_dir, tmp_path / "train.csv", f"data.extra_train=[{tmp_path / 'gen.csv'}]",
                      "train.max_steps=2", "train.eval_every=2", "data.val_size=16")
    metrics = train(cfg, tmp_path / "run", log=lambda m: None)
    assert metrics["train_rows_extra"] == 24 and metrics["train_rows"] == 64 + 24 and metrics["val_rows"] == 16


@pytest.mark.slow
def test_generated_lengths_follow_the_training_lengths(tiny_gpt2_dir):
    from budgetlora.data.augment import generate_for_class, load_causal_lm

    model, tokenizer = load_causal_lm(str(tiny_gpt2_dir))
    model.eval()
    short = generate_for_class(model, tokenizer, ["the team"], np.array([6]), 8, np.random.default_rng(0),
                               min_new_tokens=1)
    long = generate_for_class(model, tokenizer, ["the team"], np.array([40]), 8, np.random.default_rng(0),
                              min_new_tokens=1)
    n_short = [len(tokenizer(t)["input_ids"]) for t in short]
    n_long = [len(tokenizer(t)["input_ids"]) for t in long]
    assert max(n_short) <= 10 and np.mean(n_long) > 2 * np.mean(n_short)


def test_generation_drops_duplicates_and_unconfident_rows(tmp_path, monkeypatch, trained_run, synthetic_csv, tiny_gpt2_dir):
    """Dedup against training rows and within the output; the classifier keeps rows of their own class."""
    import budgetlora.data.augment as augment

    train_texts = pd.read_csv(synthetic_csv)["text"].tolist()
    clear = {"sports": "football goal team match coach league", "money": "stock market bank profit shares investors",
             "tech": "software chip computer internet phone users", "world": "president war election minister border troops"}
    calls = []

    def fake_generate(model, tokenizer, prompts, lengths, n, rng, **kwargs):
        label = {"the team": "sports", "the market": "money", "software": "tech", "the president": "world"}[prompts[0]]
        calls.append(label)
        if calls.count(label) > 1:
            return [f"{clear[label]} extra {calls.count(label)} {i}" for i in range(n)]
        # a training row, a duplicate pair, a row of another class, and one clear row of this class
        other = clear["world" if label != "world" else "sports"]
        return [train_texts[0], f"{clear[label]} again", f"{clear[label]} again", other, f"{clear[label]} today"]

    monkeypatch.setattr(augment, "generate_for_class", fake_generate)
    (tmp_path / "prompts.yaml").write_text("sports: [the team]\nmoney: [the market]\ntech: [software]\n"
                                           "world: [the president]\n", encoding="utf-8")
    run_dir, _ = trained_run
    frame = augment.generate_file(str(synthetic_csv), None, tmp_path / "gen.csv", model=str(tiny_gpt2_dir),
                                  prompts=str(tmp_path / "prompts.yaml"), per_class=2, steps=0, classifier=str(run_dir),
                                  min_confidence=0.5, log=lambda m: None)
    assert len(frame) == 8 and frame["text"].is_unique
    assert train_texts[0] not in set(frame["text"])
    for label, text in zip(frame["label"], frame["text"]):
        assert text.startswith(clear[label])  # the other-class row never passes the classifier
    assert (frame.groupby("label").size() == 2).all()


def test_generate_refuses_bad_input(tmp_path, tiny_gpt2_dir, synthetic_csv):
    from budgetlora.data.augment import generate_file, load_prompts

    (tmp_path / "p.yaml").write_text("cooking: [a recipe]\n", encoding="utf-8")
    with pytest.raises(UserError, match="unknown class 'cooking'"):
        load_prompts(str(tmp_path / "p.yaml"), ["sports", "money"], [], np.array([]))
    with pytest.raises(UserError, match="cannot load causal language model"):
        generate_file(str(synthetic_csv), None, tmp_path / "g.csv", model=str(tmp_path / "nothing-here"), steps=0)
    (tmp_path / "g.csv").write_text("x", encoding="utf-8")
    result = run_cli("augment", "generate", "--train", synthetic_csv, "--out", tmp_path / "g.csv",
                     "--model", tiny_gpt2_dir)
    assert result.returncode == 2 and "already exists" in result.stderr
    assert (tmp_path / "g.csv").read_text() == "x"
    # AG News label names get the bundled prompts; other labels get openings of their own rows
    ag = load_prompts(None, ["World", "Sports", "Business", "Sci/Tech"], [], np.array([]))
    assert set(ag) == {"World", "Sports", "Business", "Sci/Tech"} and all(ag.values())
    own = load_prompts(None, ["a", "b"], ["one two three four", "five six seven eight"], np.array([0, 1]))
    assert own == {"a": ["one two three"], "b": ["five six seven"]}
