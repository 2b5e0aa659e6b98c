#!/usr/bin/env python
"""Build the small, offline AG News sample used by the quickstart.

Reads the shared AG News training CSV (header ``text,label``) and writes two
disjoint, stratified, seeded samples:

    budgetlora/assets/quickstart/train.csv.gz
    budgetlora/assets/quickstart/eval.csv.gz

Rows are made disjoint both by row and by text: duplicate texts are dropped
before splitting, so no text can appear in both files. The evaluation rows are
carved first, so they do not depend on --n-train. `--dev-out FILE` writes the
rows neither file holds: the place to tune the quickstart recipe, never on eval.

Usage (from the repository root):
    python tools/make_quickstart_sample.py [SOURCE_CSV] [--n-train N] [--n-eval N] [--seed S] [--dev-out FILE]
"""
import argparse
import gzip
import io
from pathlib import Path

import pandas as pd
from sklearn.model_selection import train_test_split

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SOURCE = REPO_ROOT / ".." / "shared" / "data" / "ag_news" / "train.csv.gz"
DEFAULT_OUT = REPO_ROOT / "budgetlora" / "assets" / "quickstart"


def write_csv_gz(df: pd.DataFrame, path: Path) -> None:
    """Write a gzip CSV with a fixed mtime so reruns give byte-identical files."""
    buf = io.StringIO()
    df.to_csv(buf, index=False)
    with open(path, "wb") as raw:
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as gz:
            gz.write(buf.getvalue().encode("utf-8"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("source", nargs="?", default=str(DEFAULT_SOURCE),
                    help="AG News CSV(.gz) with header text,label (default: %(default)s)")
    ap.add_argument("--out-dir", default=str(DEFAULT_OUT), help="output folder (default: %(default)s)")
    ap.add_argument("--n-train", type=int, default=10000, help="training rows (default: %(default)s)")
    ap.add_argument("--n-eval", type=int, default=2000, help="evaluation rows (default: %(default)s)")
    ap.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    ap.add_argument("--dev-out", help="also write the rows left over (tuning rows, not shipped) to this CSV(.gz)")
    args = ap.parse_args()

    df = pd.read_csv(args.source)
    if list(df.columns) != ["text", "label"]:
        raise SystemExit(f"expected header text,label, got {list(df.columns)}")
    df = df.dropna(subset=["text", "label"])
    df["text"] = df["text"].astype(str)
    df["label"] = df["label"].astype(int)
    # Disjoint by text: keep only the first copy of each text before splitting.
    df = df.drop_duplicates(subset="text", keep="first").reset_index(drop=True)
    if args.n_train + args.n_eval > len(df):
        raise SystemExit(f"asked for {args.n_train + args.n_eval} rows, only {len(df)} unique texts")

    evaluation, rest = train_test_split(
        df, train_size=args.n_eval, stratify=df["label"], random_state=args.seed, shuffle=True,
    )
    if args.n_train < len(rest):
        train, dev = train_test_split(
            rest, train_size=args.n_train, stratify=rest["label"], random_state=args.seed, shuffle=True,
        )
    else:
        train, dev = rest, rest.iloc[:0]
    assert not set(train.index) & set(evaluation.index)
    assert not set(train["text"]) & set(evaluation["text"])

    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, part in (("train", train), ("eval", evaluation)):
        path = out / f"{name}.csv.gz"
        write_csv_gz(part[["text", "label"]].reset_index(drop=True), path)
        counts = part["label"].value_counts().sort_index().to_dict()
        print(f"wrote {path} rows={len(part)} labels={counts} bytes={path.stat().st_size}")
    if args.dev_out:
        assert not set(dev["text"]) & (set(train["text"]) | set(evaluation["text"]))
        write_csv_gz(dev[["text", "label"]].reset_index(drop=True), Path(args.dev_out))
        print(f"wrote {args.dev_out} rows={len(dev)} (tuning rows, not shipped)")


if __name__ == "__main__":
    main()
