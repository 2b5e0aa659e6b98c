"""Streamed predict: every format read in chunks gives the whole-file rows and predictions, an
export folder predicts and evaluates like its run, errors are one line and leave no file, and
the peak memory of `budgetlora predict` does not grow with the file."""

import os
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from budgetlora.cli import main
from budgetlora.config import DataConfig
from budgetlora.data import read_table, read_table_chunks
from budgetlora.deploy.predictor import load_predictor
from budgetlora.errors import UserError
from budgetlora.evaluation.metrics import evaluate_run
from budgetlora.evaluation.predict import predict_file

WORDS = "the a of in on today said new after over report week football goal team stock market bank software chip war".split()


def generated_csv(path, rows: int, words: int, seed: int = 0, ids: bool = True, notes: int = 0):
    """`rows` rows of `words` random words each (and an id column r0, r1, ...; with `notes`, a
    column of that many characters per row that predict reads but never tokenises)."""
    rng = np.random.default_rng(seed)
    header = (["id"] if ids else []) + ["text"] + (["notes"] if notes else [])
    with open(path, "w", encoding="utf-8") as f:
        f.write(",".join(header) + "\n")
        for i in range(rows):
            fields = ([f"r{i}"] if ids else []) + [" ".join(WORDS[j] for j in rng.integers(0, len(WORDS), words))]
            fields += ["x" * notes] if notes else []
            f.write(",".join(fields) + "\n")
    return path


def as_every_format(frame: pd.DataFrame, folder) -> list:
    """The frame as CSV, TSV, gzipped CSV, JSON lines, Parquet (row groups of 16) and a pickle."""
    paths = [folder / "d.csv", folder / "d.tsv", folder / "d.csv.gz", folder / "d.jsonl", folder / "d.parquet",
             folder / "d.pkl"]
    frame.to_csv(paths[0], index=False)
    frame.to_csv(paths[1], sep="\t", index=False)
    frame.to_csv(paths[2], index=False)
    frame.to_json(paths[3], orient="records", lines=True)
    frame.to_parquet(paths[4], index=False, row_group_size=16)
    frame.to_pickle(paths[5])
    return paths


def no_hidden_files(folder) -> bool:
    return not [p.name for p in folder.iterdir() if p.name.startswith(".")]


# ---------------------------------------------------------------- reading in chunks


def test_chunks_of_every_format_are_the_rows_of_read_table(synthetic_test_csv, tmp_path):
    frame = pd.read_csv(synthetic_test_csv)
    cfg = DataConfig(clean=["standard"])
    for path in as_every_format(frame, tmp_path):
        whole = read_table(str(path), cfg, split="test", need_labels=False, trust_pickle=True)
        chunks = list(read_table_chunks(str(path), cfg, chunk_rows=7, trust_pickle=True))
        assert [c.index for c in chunks] == list(range(len(chunks)))
        assert all(len(c.table) <= 7 for c in chunks), path
        assert [c.start for c in chunks] == list(np.cumsum([0] + [len(c.table) for c in chunks])[:-1])
        assert sum((c.table.texts for c in chunks), []) == whole.texts, path
        assert sum((c.table.ids for c in chunks), []) == whole.ids == frame["id"].tolist(), path
        assert sum((c.table.labels for c in chunks), []) == whole.labels, path


def test_keep_skips_chunks_and_messages_count_rows_from_the_start_of_the_file(tmp_path):
    path = tmp_path / "d.csv"
    pd.DataFrame({"text": [f"row {i}" for i in range(20)]}).to_csv(path, index=False)
    kept = list(read_table_chunks(str(path), DataConfig(), chunk_rows=6, keep=lambda i: i % 2 == 1))
    assert [(c.index, c.start, c.table.texts[0]) for c in kept] == [(1, 6, "row 6"), (3, 18, "row 18")]
    pd.DataFrame({"id": range(14), "text": [f"row {i}" for i in range(13)] + [" "]}).to_csv(path, index=False)
    with pytest.raises(UserError, match=r"empty or non-text 'text' \(first: row 13\)"):
        list(read_table_chunks(str(path), DataConfig(), chunk_rows=5))


# ---------------------------------------------------------------- predict


def test_streamed_predictions_equal_the_whole_file_predictions(trained_run, synthetic_test_csv, tmp_path):
    run_dir, _ = trained_run
    frame = pd.read_csv(synthetic_test_csv)
    predictor = load_predictor(run_dir)
    expected = predictor.predict(frame["text"].tolist())
    for path in as_every_format(frame, tmp_path)[3:5]:  # JSON lines and Parquet; CSV: the CLI tests
        got = predict_file(run_dir, str(path), tmp_path / f"{path.name}.out.csv", probabilities=True,
                           trust_pickle=True, chunk_rows=9)
        assert got["ID"].tolist() == frame["id"].tolist(), path
        assert got["Label"].tolist() == expected.argmax(1).tolist(), path
        probs = got[[f"prob_{n}" for n in predictor.label_names]].to_numpy()
        np.testing.assert_allclose(probs, np.exp(expected) / np.exp(expected).sum(1, keepdims=True), atol=1e-5)
    assert no_hidden_files(tmp_path)


def test_row_number_ids_continue_across_chunks(trained_run, tmp_path):
    data = generated_csv(tmp_path / "plain.csv", 23, 5, ids=False)
    out = tmp_path / "p.csv"
    assert main(["predict", str(trained_run[0]), "--data", str(data), "--out", str(out), "--chunk-rows", "4"]) == 0
    frame = pd.read_csv(out)
    assert list(frame.columns) == ["ID", "Label"] and frame["ID"].tolist() == list(range(23))


def test_a_header_only_file_gives_a_header_only_prediction_file(trained_run, tmp_path):
    data = tmp_path / "empty.csv"
    data.write_text("id,text\n")
    out = tmp_path / "p.csv"
    assert main(["predict", str(trained_run[0]), "--data", str(data), "--out", str(out), "--label-names"]) == 0
    assert out.read_text() == "ID,Label,LabelName\n"


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("budgetlora: error: "), err
    return err


def test_errors_are_one_line_and_leave_no_file(trained_run, tmp_path, capsys):
    run_dir = str(trained_run[0])
    out = tmp_path / "p.csv"
    assert main(["predict", run_dir, "--data", str(tmp_path / "nope.csv"), "--out", str(out)]) == 2
    assert "does not exist" in one_line_error(capsys)
    pd.DataFrame({"body": ["a b c"]}).to_csv(tmp_path / "body.csv", index=False)
    assert main(["predict", run_dir, "--data", str(tmp_path / "body.csv"), "--out", str(out)]) == 2
    assert "text column 'text' not in" in one_line_error(capsys)
    for command in (["predict", "--out", str(out)], ["evaluate"]):
        assert main([command[0], run_dir, "--data", str(tmp_path / "body.csv"), "--backend", "tpu", *command[1:]]) == 2
        assert "invalid choice: 'tpu'" in one_line_error(capsys)
    assert main(["predict", run_dir, "--data", str(tmp_path / "body.csv"), "--backend", "onnx", "--out", str(out)]) == 2
    assert "only the torch backend reads" in one_line_error(capsys)
    # a bad row in a late chunk: the rows before it were written, yet no file appears, and an
    # existing output is left as it was
    rows = [f"good row {i}" for i in range(30)] + [""]
    pd.DataFrame({"id": range(31), "text": rows}).to_csv(tmp_path / "late.csv", index=False)
    out.write_text("previous\n")
    assert main(["predict", run_dir, "--data", str(tmp_path / "late.csv"), "--out", str(out), "--overwrite",
                 "--chunk-rows", "8"]) == 2
    assert "first: row 30" in one_line_error(capsys)
    assert out.read_text() == "previous\n"
    assert no_hidden_files(tmp_path)


# ---------------------------------------------------------------- an export folder


@pytest.fixture(scope="module")
def exported(trained_run, tmp_path_factory):
    from budgetlora.deploy.export import export_run

    out = tmp_path_factory.mktemp("exports") / "export"
    export_run(trained_run[0], out, ["hf", "onnx"], log=lambda m: None)
    return out


def test_an_export_evaluates_and_predicts_like_its_run(trained_run, exported, synthetic_test_csv, tmp_path):
    run_dir = trained_run[0]
    on_run = evaluate_run(run_dir, str(synthetic_test_csv))
    for backend in (None, "torch", "onnx"):
        on_export = evaluate_run(exported, str(synthetic_test_csv), backend=backend)
        assert on_export["accuracy"] == on_run["accuracy"] and on_export["confusion_matrix"] == on_run["confusion_matrix"]
        assert on_export["accuracy_ci95"] == on_run["accuracy_ci95"]  # the run's seed travels with the export
        assert on_export["loss"] == pytest.approx(on_run["loss"], abs=1e-4)
    options = dict(probabilities=True, label_names_column=True, chunk_rows=50)
    by_run = predict_file(run_dir, str(synthetic_test_csv), tmp_path / "run.csv", **options)
    for backend in ("torch", "onnx"):
        by_export = predict_file(exported, str(synthetic_test_csv), tmp_path / f"{backend}.csv", backend=backend, **options)
        assert list(by_export.columns) == list(by_run.columns)
        assert by_export[["ID", "Label", "LabelName"]].equals(by_run[["ID", "Label", "LabelName"]])
        np.testing.assert_allclose(by_export.filter(like="prob_").to_numpy(), by_run.filter(like="prob_").to_numpy(),
                                   atol=1e-4)


def test_an_export_without_int8_refuses_that_backend_in_one_line(exported, synthetic_test_csv, capsys):
    assert main(["evaluate", str(exported), "--data", str(synthetic_test_csv), "--backend", "onnx-int8"]) == 2
    assert "holds no onnx-int8 export" in one_line_error(capsys)


# ---------------------------------------------------------------- bounded memory


def peak_rss_mb(*args) -> float:
    """Peak resident memory (MB) of `python -m budgetlora ARGS`, the only child of a fresh process.
    One thread and two malloc arenas: a busy shared CPU then changes the timing, not the peak."""
    probe = ("import resource, subprocess, sys; done = subprocess.run(sys.argv[1:]); "
             "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(done.returncode)")
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1", "MALLOC_ARENA_MAX": "2"}
    done = subprocess.run([sys.executable, "-c", probe, sys.executable, "-m", "budgetlora", *map(str, args)],
                          capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    return int(done.stdout.strip().splitlines()[-1]) / 1024


def check_flat_memory(run_dir, folder, rows: int, chunk_rows: int, notes: int = 0, fraction: float = 0.25):
    """Predict files of `rows` and 5 x `rows` rows of short texts: exact outputs, and the longer
    file's extra bytes add less than `fraction` of their size to the peak (reading it whole
    would hold all of them)."""
    peaks, sizes = [], []
    for n in (rows, 5 * rows):
        data = generated_csv(folder / f"in{n}.csv", n, 6, notes=notes)
        out = folder / f"out{n}.csv"
        started = time.perf_counter()
        peaks.append(peak_rss_mb("predict", run_dir, "--data", data, "--out", out, "--chunk-rows", chunk_rows))
        seconds = time.perf_counter() - started
        sizes.append(data.stat().st_size / 2**20)
        ids = pd.read_csv(out, usecols=["ID"])["ID"]
        assert len(ids) == n and (ids == [f"r{i}" for i in range(n)]).all()
        data.unlink()
        print(f"{n} rows ({sizes[-1]:.1f} MB): peak RSS {peaks[-1]:.0f} MB, {seconds:.0f} s")
    assert peaks[1] - peaks[0] < fraction * (sizes[1] - sizes[0]), (peaks, sizes)
    return peaks


def test_peak_memory_does_not_grow_with_the_file(trained_run, tmp_path):
    # 5 kB of notes per row make the files 10 and 50 MB for 2,000 and 10,000 short texts (a
    # whole-file read holds the 40 MB more, a chunk of 200 rows 1 MB); 10 chunks reach the
    # allocator's plateau
    check_flat_memory(trained_run[0], tmp_path, rows=2000, chunk_rows=200, notes=5000)


@pytest.mark.slow
def test_a_million_short_rows_predict_in_the_memory_of_a_fifth_of_them(trained_run, tmp_path):
    # 200,000 rows (3 MB) and 1,000,000 rows (16 MB): the million fit in the 200,000's memory
    check_flat_memory(trained_run[0], tmp_path, rows=200_000, chunk_rows=4096, fraction=0.5)
