#!/usr/bin/env python
"""Speed benchmark: budgetlora against Hugging Face Trainer + PEFT, in one process.

Every pipeline gets the same model, the same data file, the same stratified train/validation
split (budgetlora's own `train_val_indices`, same seed and val_size, same `max_train_samples`
subsampling) and the same recipe: LoRA r=6, alpha=24, dropout 0.1 on the attention q,k,v
projections, the model's standard classification head trained fully, AdamW lr 2e-4, weight
decay 0.01, linear schedule with 10% warmup, gradient clipping 1.0, max length 256.

Pipelines (``--pipelines``, comma-separated, run in the order given):

  trainer-published   Trainer + PEFT as the published recipe runs it: fp32, every row padded
                      to 256 tokens (padding="max_length"), batch 16, random order.
  trainer-tuned       Trainer + PEFT tuned: bf16 on a GPU (fp32 on CPU), dynamic padding
                      (DataCollatorWithPadding), length-grouped batches, batch 32.
  budgetlora          budgetlora.train() with recipe r6-qkv-a24, batch 32 (its own loop:
                      dynamic padding, length-grouped batches where budgetlora has
                      train.group_by_length (default on), bf16 autocast on a GPU).

Ablations: append modifiers with "+" to any pipeline, e.g. ``budgetlora+b16``,
``trainer-tuned+nogroup``, ``trainer-published+dynpad``, ``trainer-tuned+nodrop``:
  +bN       batch size N                 +nogroup / +group   length grouping off / on
  +dynpad   dynamic padding (Trainer)    +maxpad             pad to max length (Trainer)
  +nodrop   LoRA dropout 0 (changes the recipe: a speed ablation only)
  +fp32     force fp32                   +bf16               force bf16 autocast
  +tokens   budgetlora with train.batching=tokens (batches of about equal tokens)
  +torchdrop budgetlora with train.fast_dropout=false (torch's own CPU dropout masks)
  +pefttrain budgetlora with train.fused_lora=false (PEFT's own LoRA layers in training)
  +sdpa / +eager  budgetlora with model.attention=sdpa / eager (auto: eager on a CPU)

Length of training. ``--max-steps S`` is the number of optimizer steps at batch 32; every
pipeline trains on the same number of samples (S x 32), so a batch-16 pipeline takes 2 S
steps. ``--epochs E`` gives E passes over the training rows to every pipeline instead.
``--published-samples N`` trains the padded trainer-published pipeline(s) on fewer samples
(it is slow on a CPU); its samples/s do not depend on that.

What is measured, per pipeline:
  loop samples/s   samples / training-loop seconds. Trainer: its `train_runtime` (the whole
                   loop: data loading, collation, callbacks, forward/backward, optimizer).
                   budgetlora: from the first batch it collates to the start of its final
                   evaluation (train(..., hooks=Hooks(collate=..., compute_logits=...)) wraps
                   budgetlora's default collate and compute_logits to time-stamp them).
  step samples/s   samples / seconds inside the optimizer steps (forward, backward, clipping,
                   optimizer and scheduler step). Trainer: a callback timing on_step_begin ->
                   on_step_end; budgetlora: the loop minus the time spent in its `collate`.
                   loop - step = per-step overhead outside the step (data, callbacks, ...).
                   budgetlora's own `train_seconds` (in the JSON) is its loop time.
  tokens/s         non-padding tokens (attention_mask sum) / loop seconds.
  MFU              tokens/s x FLOPs per token / peak FLOP/s. FLOPs per token = 4 x N, N the
                   non-embedding parameters of the frozen encoder (its Transformer layers;
                   embeddings, pooler and head excluded): 2N for the forward pass, 2N for the
                   backward pass through the activations; a frozen weight needs no weight
                   gradient (the usual 6N minus the 2N of weight gradients). Attention-score
                   FLOPs (O(sequence length)) and the LoRA/head FLOPs are left out. Only
                   non-padding tokens count: padding is wasted work, not useful FLOPs.
                   Peak: --peak-tflops; default on CUDA by GPU name (H100/H200 989 bf16 dense),
                   on CPU threads x clock x 32 FP32 FLOP/cycle (two 256-bit FMA pipes;
                   64 with AVX-512), an estimate.
  peak memory      CUDA: torch.cuda.max_memory_allocated, reset before each pipeline,
                   read at the end of its training loop. CPU: growth of the process RSS over
                   the pipeline's start, sampled every 20 ms up to the end of its training loop
                   (best effort: the allocator reuses memory freed by earlier pipelines).
  wall             the whole pipeline: model load, tokenisation, training, final evaluation.
  val accuracy     the final model on the validation rows (no early stopping: one evaluation
                   at the end of training for every pipeline).
  inference        samples/s predicting the validation rows with the trained model, batch
                   --eval-batch-size (128): budgetlora's compute_logits over budgetlora.data.tokenize
                   ids (length-sorted batches) after budgetlora.load_run (merged LoRA, and
                   unmerged where load_run has `merge`); Trainer.predict for the Trainer
                   pipelines. Tokenisation is excluded from both. Accuracy from Trainer.predict
                   is taken against its returned label_ids: with group_by_length, transformers 5
                   also length-groups the eval sampler, so rows come back shuffled.

The parts live in benchmarks/speedbench/ (shared: common, machine, meters, specs, data,
reference, report, cli; one file per pipeline: trainer_pipeline, budgetlora_pipeline, inference).

Usage (from the repository root):
  python benchmarks/speed.py --rows 1200 --val-size 300 --epochs 1 --json speed.json
  python benchmarks/speed.py --model tests/fixtures/roberta-base-tokenizer --random-init ...
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # budgetlora from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))  # speedbench, also when imported from elsewhere

from speedbench.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
