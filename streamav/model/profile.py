"""Cost of the streaming step: multiply-accumulates per module group, and eager latency.

`python -m streamav.model.profile [--preset default] [--batch 1] [--steps 300] [--threads 2]`
prints both as JSON; docs/model.md quotes its numbers.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict

import torch
from torch import nn

from streamav.model.config import preset
from streamav.model.streaming import State, StreamingModel

_GROUPS = ("audio.encoder", "audio.decoder", "visual.encoder", "visual.decoder",
           "mdvae.visual_features", "mdvae.w_evidence", "mdvae.post", "mdvae.prior",
           "mdvae.gru", "mdvae.decoder_a", "mdvae.decoder_v", "emotion")


def _module_macs(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> int:
    x = inputs[0]
    if isinstance(module, nn.Linear):
        return x.numel() // module.in_features * module.in_features * module.out_features
    if isinstance(module, (nn.Conv1d, nn.Conv2d)):
        k = int(torch.tensor(module.kernel_size).prod())
        return output.numel() * module.in_channels // module.groups * k
    if isinstance(module, (nn.ConvTranspose1d, nn.ConvTranspose2d)):
        k = int(torch.tensor(module.kernel_size).prod())
        return x.numel() * module.out_channels // module.groups * k
    return 0


def count_macs(model: StreamingModel, batch: int = 1) -> dict[str, int]:
    """MACs of one `step` per stream (convolutions and matmuls), by module group and in total."""
    totals: dict[str, int] = defaultdict(int)
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.ConvTranspose1d,
                               nn.ConvTranspose2d)):
            group = next((g for g in _GROUPS if name.startswith(g)), "other")

            def hook(mod, inp, out, group=group):
                totals[group] += _module_macs(mod, inp, out) // batch
            hooks.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model.eval()(*model.example_inputs(batch))
    finally:
        for h in hooks:
            h.remove()
    result = {g: totals[g] for g in (*_GROUPS, "other") if totals.get(g)}
    result["total"] = sum(result.values())
    return result


def step_latency_ms(model: StreamingModel, batch: int = 1, steps: int = 300,
                    warmup: int = 30) -> dict[str, float]:
    """Eager `step` latency (ms): p50, p90, p99 and mean over `steps` calls after a warm-up."""
    model.eval()
    spectrum, face, *state_tensors = model.example_inputs(batch)
    state = State(*state_tensors)
    times = []
    with torch.inference_mode():
        for i in range(warmup + steps):
            t0 = time.perf_counter()
            _, state = model.step(spectrum, face, state)
            if i >= warmup:
                times.append((time.perf_counter() - t0) * 1e3)
    t = torch.tensor(times)
    return {"p50_ms": float(t.quantile(0.5)), "p90_ms": float(t.quantile(0.9)),
            "p99_ms": float(t.quantile(0.99)), "mean_ms": float(t.mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="default")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = StreamingModel(preset(args.preset))
    report = {"preset": args.preset, "batch": args.batch, "threads": args.threads,
              "parameters": sum(p.numel() for p in model.parameters()),
              "macs_per_stream": count_macs(model, args.batch),
              "latency": step_latency_ms(model, args.batch, args.steps),
              "torch": torch.__version__}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
