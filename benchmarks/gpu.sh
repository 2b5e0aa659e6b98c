#!/usr/bin/env bash
# The one-call GPU check of issue 15: benchmarks/gpu_check.py (its docstring says what it runs),
# with every flag passed on; --dry-run runs the same stages on a CPU with tiny models.
# Before it, where `datasets` is missing (the GPU machine's image lacks it), the wheels carried in
# .device-carry/wheels (or $GPU_CHECK_WHEELS) are installed into /tmp/gpu-check-site.
# Results: $OUT (default runs/gpu-check). Python: $PYTHON (default python3).
# Usage, from anywhere: bash benchmarks/gpu.sh [--dry-run] [--data FILE] [--budget SECONDS]
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
WHEELS=${GPU_CHECK_WHEELS:-.device-carry/wheels}
if ! "$PYTHON" -c "import datasets" 2>/dev/null; then
  if compgen -G "$WHEELS/*.whl" >/dev/null; then
    echo "gpu.sh: datasets is missing; installing $(ls "$WHEELS" | tr '\n' ' ')" >&2
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/gpu-check-site "$WHEELS"/*.whl && export PYTHONPATH=/tmp/gpu-check-site${PYTHONPATH:+:$PYTHONPATH}
  else
    echo "gpu.sh: datasets is missing and no wheels in $WHEELS: the stages that tokenise will fail" >&2
  fi
fi
exec "$PYTHON" benchmarks/gpu_check.py "$@"
