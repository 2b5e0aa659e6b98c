#!/usr/bin/env python
"""One training step's forward + backward: PEFT's LoRA layers against budgetlora's fused ones.

Steps are interleaved (A B A B ...) in one process on the same model and batch, so a machine that
speeds up or slows down mid-run affects both alike; the paired median ratio is the figure. Only
the layers differ: the same PEFT model, the same LoRA weights, the same inputs.

    python benchmarks/lora_step.py                        # MiniLM-L6, LoRA r=8 on all linear layers
    python benchmarks/lora_step.py --targets query,key,value --r 6 --alpha 24 --dropout 0.1
    # another version of the fused layers against this one, e.g. the commit before a change:
    git show 20c66f2:budgetlora/training/fused_lora.py > /tmp/fused_before.py
    python benchmarks/lora_step.py --against /tmp/fused_before.py

Prints one JSON line: milliseconds per step (median, mean) for each side and the median ratio.
"""
import argparse
import importlib.util
import json
import statistics
import time

import torch

from budgetlora.quickstart import minilm_path
from budgetlora.training import fused_lora
from speedbench.machine import cpu_identity


def load_module(path: str):
    spec = importlib.util.spec_from_file_location("fused_lora_against", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="model folder or hub id (default: the PyPI MiniLM-L6)")
    p.add_argument("--targets", default="all-linear", help="all-linear or comma-separated module names")
    p.add_argument("--r", type=int, default=8)
    p.add_argument("--alpha", type=float, default=16)
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--tokens", type=int, default=52)
    p.add_argument("--steps", type=int, default=25, help="timed steps per side")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--against", default=None,
                   help="a fused_lora.py file to compare with this checkout's (default: PEFT's own layers)")
    args = p.parse_args()

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModel

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = AutoModel.from_pretrained(args.model or minilm_path())
    targets = args.targets if args.targets == "all-linear" else args.targets.split(",")
    model = get_peft_model(model, LoraConfig(r=args.r, lora_alpha=args.alpha, target_modules=targets,
                                             lora_dropout=args.dropout))
    model.train()
    for module in model.modules():  # B = 0 at init would hide the adapter's backward work from nothing
        if fused_lora.fusable(module):
            torch.nn.init.normal_(module.lora_B[module.active_adapters[0]].weight, std=0.01)
    layers = [m for m in model.modules() if fused_lora.fusable(m)]
    other = load_module(args.against) if args.against else None

    def use(side: str) -> None:
        for layer in layers:
            layer.__dict__.pop("forward", None)  # back to PEFT's own forward
        if side == "fused":
            fused_lora.use_fused_lora(model)
        elif other is not None:
            other.use_fused_lora(model)

    ids = torch.randint(5, model.config.vocab_size, (args.batch, args.tokens))  # past the special tokens
    mask = torch.ones_like(ids)

    def step() -> float:
        started = time.perf_counter()
        model(input_ids=ids, attention_mask=mask).last_hidden_state.float().mean().backward()
        model.zero_grad(set_to_none=True)
        return time.perf_counter() - started

    baseline = "against" if other else "peft"
    times = {baseline: [], "fused": []}
    for side in times:  # warm-up
        use(side)
        step(), step()
    for _ in range(args.steps):
        for side in times:
            use(side)
            times[side].append(step())
    ratios = [b / f for b, f in zip(times[baseline], times["fused"])]
    print(json.dumps({
        "benchmark": "lora_step", "cpu": cpu_identity(),
        "torch": torch.__version__, "threads": args.threads, "args": vars(args), "fused_layers": len(layers),
        **{f"{side}_ms_median": round(1000 * statistics.median(v), 1) for side, v in times.items()},
        **{f"{side}_ms_mean": round(1000 * statistics.mean(v), 1) for side, v in times.items()},
        "speedup_paired_median": round(statistics.median(ratios), 3),
    }))


if __name__ == "__main__":
    main()
