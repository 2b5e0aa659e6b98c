"""The one-call GPU check of issue 15 in parts (entry points: benchmarks/gpu.sh, which runs
benchmarks/gpu_check.py).

`plan` (sizes, time caps and targets, for the GPU and for --dry-run), `inputs` (the model
folders and the data file: the carried MPNet parts assembled, tiny models for --dry-run, the
AG News rows or the bundled sample), `runner` (one stage: a subprocess under its own timeout,
its output appended to the one log, its record written as JSON), `envinfo` (what the machine
and its Python are; also a script), `progress` (the figures a stage's log printed, for a stage
stopped at its cap), `summary` (the targets met or not, and the compact figures).
"""
