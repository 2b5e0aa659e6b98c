"""What the GPU check runs and how big: data sizes and time caps for an H200 (one call of at most
9 minutes) and for --dry-run (tiny models on a CPU, about a minute on 2 cores), and the targets of
issue 15 that summary.json checks."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Sizes:
    rows: int  # training rows of the speed stages (speed.py --rows)
    val: int  # validation rows, also the rows inference is timed on
    epochs: float  # passes over the training rows, every pipeline but the padded one
    published: int  # samples for trainer-published (padded to 256; its samples/s do not depend on it)
    eval_batch: int  # inference batch of every pipeline (speed.py --eval-batch-size)
    speed_caps: tuple[float, float]  # seconds: roberta-base speed stage, MPNet speed stage
    default_cap: float  # seconds: the default recipe's whole run
    budget: float  # seconds for the whole check, every stage included


# An H200 trains roberta-base at batch 32 at an estimated 1,000-3,000 samples/s and the padded
# fp32 pipeline at about 400: 20,000 rows take each pipeline 10-20 s of training, plus loading,
# tokenising and inference; 9 minutes in all, each stage capped so one slow stage cannot eat the others.
GPU = Sizes(rows=20_000, val=3_000, epochs=1.0, published=4_000, eval_batch=256,
            speed_caps=(165.0, 135.0), default_cap=185.0, budget=520.0)
# --dry-run checks that the stages run, not how fast: caps wide enough for a busy shared CPU
DRY = Sizes(rows=48, val=16, epochs=1.0, published=16, eval_batch=16,
            speed_caps=(400.0, 400.0), default_cap=400.0, budget=1500.0)

# speed.py --pipelines: the three of issue 15, budgetlora first (a stage that overruns keeps the
# figures its log already printed), and budgetlora at batch 128 on roberta-base shapes (how far a
# GPU gets once the per-step overhead is spread over more rows)
PIPELINES = "budgetlora,trainer-tuned,trainer-published"
ROBERTA_PIPELINES = PIPELINES + ",budgetlora+b128"

# --dry-run's speed.py: one thread, no warm-up passes, a stated peak instead of timing matmuls
# (a GPU's peak comes from its spec sheet too), no ONNX int8 export (a CPU-only variant)
DRY_SPEED_FLAGS = ["--threads", "1", "--no-warmup", "--peak-tflops", "1", "--no-int8"]
# --dry-run's default run: the default recipe on a few rows of a tiny model
DRY_DEFAULT_RUN = ["data.max_train_samples=96", "data.val_size=32", "model.max_length=64"]

# issue 15's GPU targets: (name, stage file, what is read, comparison, threshold)
TARGETS = [
    ("roberta_base_train_samples_per_s", "speed-roberta", "budgetlora loop samples/s (speed.py)", ">=", 15_000),
    ("roberta_base_infer_samples_per_s", "speed-roberta", "budgetlora inference samples/s (load_predictor, auto)",
     ">=", 40_000),
    ("mpnet_default_run_wall_s", "default-run", "`budgetlora train` wall seconds, process start to exit", "<=", 30),
]


def fit(sizes: Sizes, n_rows: int) -> dict:
    """The sizes for a data file of n_rows: the validation rows at most an eighth of it, the
    training rows at most what is left."""
    val = min(sizes.val, max(1, n_rows // 8))
    rows = min(sizes.rows, n_rows - val)
    return {"rows": rows, "val": val, "epochs": sizes.epochs, "published": min(sizes.published, rows),
            "eval_batch": sizes.eval_batch}
