"""The speed benchmark in parts (entry point: benchmarks/speed.py; benchmarks/parity.py reuses them).

Shared: `common` (recipe, paths, defaults, device helpers), `machine` (what the device is, its
peak FLOP/s), `meters` (other load, peak memory), `specs` (pipeline names and modifiers, step
counts), `data` (budgetlora's own split, its config, a random-init model), `reference` (the
Trainer + PEFT model and arguments), `report` (derived rates, summary, table, JSON), `cli`.
One file per pipeline: `trainer_pipeline` (trainer-published and trainer-tuned: one Trainer run,
the spec decides padding, batch and grouping), `budgetlora_pipeline` (budgetlora.train, timed
through its public Hooks) and `inference` (Trainer.predict; load_run + compute_logits).
"""
