import pickle

import numpy as np
import pandas as pd
import pytest

from budgetlora.config import DataConfig
from budgetlora.data import (
    AG_NEWS_LABELS, encode_labels, epoch_batches, infer_label_names, read_table, split_train_val, tokenize, train_order,
)
from budgetlora.errors import UserError

ROWS = pd.DataFrame({"text": ["Stocks fall", "Team wins", "New chip", "Talks fail"], "label": [2, 1, 3, 0]})


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl", "parquet", "csv.gz"])
def test_reads_every_tabular_format(tmp_path, fmt):
    path = tmp_path / f"data.{fmt}"
    if fmt == "csv":
        ROWS.to_csv(path, index=False)
    elif fmt == "csv.gz":
        ROWS.to_csv(path, index=False, compression="gzip")
    elif fmt == "tsv":
        ROWS.to_csv(path, sep="\t", index=False)
    elif fmt == "jsonl":
        ROWS.to_json(path, orient="records", lines=True)
    else:
        ROWS.to_parquet(path)
    table = read_table(str(path), DataConfig())
    assert table.texts == ROWS.text.tolist()
    assert [int(v) for v in table.labels] == ROWS.label.tolist()


def test_original_ag_news_csv_is_detected_and_joined(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text('"3","Wall St. Bears","Short-sellers are back."\n"1","Talks","Leaders meet."\n', encoding="utf-8")
    table = read_table(str(path), DataConfig())
    assert table.texts == ["Wall St. Bears Short-sellers are back.", "Talks Leaders meet."]
    assert list(table.labels) == [2, 0]
    assert table.label_names == AG_NEWS_LABELS
    assert encode_labels(table, infer_label_names(table, None)).tolist() == [2, 0]


def test_pickle_needs_explicit_trust(tmp_path):
    path = tmp_path / "data.pkl"
    with open(path, "wb") as f:
        pickle.dump(ROWS, f)
    with pytest.raises(UserError, match="--trust-pickle"):
        read_table(str(path), DataConfig())
    assert read_table(str(path), DataConfig(), trust_pickle=True).texts == ROWS.text.tolist()


def test_configurable_columns_and_ids(tmp_path):
    path = tmp_path / "d.csv"
    pd.DataFrame({"ID": [7, 8], "body": ["a b", "c d"], "topic": ["x", "y"]}).to_csv(path, index=False)
    table = read_table(str(path), DataConfig(text_column="body", label_column="topic"))
    assert table.ids == [7, 8] and table.texts == ["a b", "c d"] and table.labels == ["x", "y"]


def test_label_names_inferred_and_mapped():
    from budgetlora.data import TextTable

    named = TextTable(["a", "b", "c"], ["sports", "world", "sports"], None, None, "x")
    names = infer_label_names(named, None)
    assert names == ["sports", "world"]
    assert encode_labels(named, names).tolist() == [0, 1, 0]
    ints = TextTable(["a", "b", "c", "d"], [0, 3, 1, 2], None, None, "x")
    assert infer_label_names(ints, None) == ["0", "1", "2", "3"]
    # a run trained with names accepts both names and class ids, and nothing else
    assert encode_labels(TextTable(["a", "b"], ["world", 0], None, None, "x"), names).tolist() == [1, 0]
    with pytest.raises(UserError, match="unknown label 'politics'"):
        encode_labels(TextTable(["a"], ["politics"], None, None, "x"), names)
    with pytest.raises(UserError, match="unknown label 5"):
        encode_labels(TextTable(["a"], [5], None, None, "x"), names)


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda p: p.with_suffix(".csv"), "does not exist"),
        (lambda p: (p.with_suffix(".xyz").write_text("a,b\n1,2\n"), p.with_suffix(".xyz"))[1], "unknown file format"),
        (lambda p: (pd.DataFrame({"body": ["x"], "label": [0]}).to_csv(p.with_suffix(".csv"), index=False), p.with_suffix(".csv"))[1], "text column 'text'"),
        (lambda p: (pd.DataFrame({"text": ["x"], "y": [0]}).to_csv(p.with_suffix(".csv"), index=False), p.with_suffix(".csv"))[1], "label column 'label'"),
        (lambda p: (pd.DataFrame({"text": ["x", " "], "label": [0, 1]}).to_csv(p.with_suffix(".csv"), index=False), p.with_suffix(".csv"))[1], "empty"),
        (lambda p: (p.with_suffix(".csv").write_bytes(b"text,label\n\xff\xfe bad,0\n"), p.with_suffix(".csv"))[1], "not UTF-8"),
    ],
)
def test_bad_files_give_one_line_errors(tmp_path, setup, message):
    path = setup(tmp_path / "data")
    with pytest.raises(UserError) as err:
        read_table(str(path), DataConfig())
    assert message in str(err.value) and "\n" not in str(err.value)


def test_stratified_split_is_seeded_and_sized():
    labels = np.repeat(np.arange(4), [400, 300, 200, 100])
    train, val = split_train_val(labels, 0.1, seed=3)
    assert len(val) == 100 and len(train) == 900 and not set(train) & set(val)
    assert np.bincount(labels[val]).tolist() == [40, 30, 20, 10]
    again_train, again_val = split_train_val(labels, 0.1, seed=3)
    assert (again_val == val).all()
    assert not (split_train_val(labels, 0.1, seed=4)[1] == val).all()
    assert len(split_train_val(labels, 250, seed=3)[1]) == 250


def test_epoch_order_is_a_function_of_seed_and_epoch():
    assert (train_order(50, 1, 2) == train_order(50, 1, 2)).all()
    assert not (train_order(50, 1, 2) == train_order(50, 1, 3)).all()


class CountingTokenizer:
    """Delegates to a real tokenizer and counts batch calls (the expensive ones)."""

    def __init__(self, inner):
        self.inner, self.batch_calls = inner, 0

    def __call__(self, text, **kwargs):
        if isinstance(text, list):
            self.batch_calls += 1
        return self.inner(text, **kwargs)

    def __len__(self):
        return len(self.inner)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_tokenisation_is_cached_on_disk(tokenizer_dir, tmp_path, monkeypatch):
    from transformers import AutoTokenizer

    monkeypatch.setenv("BUDGETLORA_CACHE", str(tmp_path))
    tok = CountingTokenizer(AutoTokenizer.from_pretrained(str(tokenizer_dir)))
    texts = ["Wall St. Bears Claw Back Into the Black (Reuters)", "second text"] * 3
    first = tokenize(texts, tok, max_length=8)
    assert tok.batch_calls == 1
    assert first[0].tolist() == [0, 28216, 312, 4, 6033, 44121, 3727, 2]  # truncated to 8, ends with </s>
    second = tokenize(texts, tok, max_length=8)
    assert tok.batch_calls == 1  # read back, not re-tokenised
    assert all((a == b).all() for a, b in zip(first, second))
    tokenize(texts, tok, max_length=16)  # another setting is another cache entry
    assert tok.batch_calls == 2


def test_hub_datasets_load_the_usual_way_with_their_label_names(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(name, split=None, **kwargs):
        calls.append((name, split))
        features = datasets.Features({"text": datasets.Value("string"),
                                      "label": datasets.ClassLabel(names=AG_NEWS_LABELS)})
        return datasets.Dataset.from_dict({"text": ["Stocks fall", "Team wins"], "label": [2, 1]}, features=features)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    table = read_table("ag_news", DataConfig())
    assert calls == [("ag_news", "train")]
    assert table.label_names == AG_NEWS_LABELS and table.texts == ["Stocks fall", "Team wins"]
    read_table("fancyzhx/ag_news:test", DataConfig(), split="train")
    assert calls[-1] == ("fancyzhx/ag_news", "test")


def test_unreachable_hub_is_a_one_line_error():
    # conftest switches the hub off, as it is on a machine without network
    with pytest.raises(UserError) as err:
        read_table("ag_news", DataConfig())
    assert "cannot load dataset 'ag_news'" in str(err.value) and "local file" in str(err.value)
    assert "\n" not in str(err.value)


def test_length_grouped_order_is_a_permutation_with_little_padding():
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 200, size=1003)
    order = train_order(1003, seed=1, epoch=0, lengths=lengths, batch_size=16, group=10)
    assert sorted(order.tolist()) == list(range(1003))
    assert (order == train_order(1003, seed=1, epoch=0, lengths=lengths, batch_size=16, group=10)).all()

    def padded(o):
        return sum(len(b) * lengths[b].max() for b in np.array_split(o, range(16, len(o), 16)))

    plain = train_order(1003, seed=1, epoch=0)
    assert padded(order) < 0.7 * padded(plain)  # far fewer padding tokens than random batches
    assert not (order[:16] == train_order(1003, 1, 1, lengths, 16, 10)[:16]).all()


def test_token_batches_keep_the_step_count_and_even_out_tokens():
    rng = np.random.default_rng(0)
    lengths = np.clip(rng.lognormal(3.9, 0.35, 3000).astype(int), 5, 256)  # AG News-like
    for n, bs in [(3000, 32), (3000, 7), (33, 32), (3, 32), (100, 1)]:
        tok = epoch_batches(n, 1, 0, lengths[:n], bs, by_tokens=True)
        rows = epoch_batches(n, 1, 0, lengths[:n], bs)
        assert len(tok) == len(rows) == -(-n // bs)  # same steps per epoch as row batches
        assert np.array_equal(np.sort(np.concatenate(tok)), np.arange(n))  # every row once
        assert min(len(b) for b in tok) >= 1
    tok = epoch_batches(3000, 1, 0, lengths, 32, by_tokens=True)
    rows = epoch_batches(3000, 1, 0, lengths, 32)
    real = [int(lengths[b].sum()) for b in tok]
    padded = [len(b) * int(lengths[b].max()) for b in tok]
    row_padded = [len(b) * int(lengths[b].max()) for b in rows]
    assert max(real) <= np.mean(real) + lengths.max()  # cut where the cumulative tokens cross
    assert max(padded) < 0.6 * max(row_padded)  # the largest batch is much smaller
    assert sum(padded) <= 1.02 * sum(row_padded)  # and padding no worse than length grouping
    assert len({len(b) for b in tok}) > 5  # wide batches of short rows, narrow ones of long rows
    again = epoch_batches(3000, 1, 0, lengths, 32, by_tokens=True)
    assert all(np.array_equal(a, b) for a, b in zip(tok, again))  # a function of seed and epoch
    other = epoch_batches(3000, 1, 1, lengths, 32, by_tokens=True)
    assert not all(np.array_equal(a, b) for a, b in zip(tok, other))


def test_row_batches_are_the_epoch_order_cut_in_batch_size():
    lengths = np.arange(50) % 13 + 1
    order = train_order(50, 3, 2, lengths, 8)
    batches = epoch_batches(50, 3, 2, lengths, 8)
    assert np.array_equal(np.concatenate(batches), order) and [len(b) for b in batches] == [8] * 6 + [2]
