"""`make gpu-check`: wcgan on one real GPU, in one table, in a few minutes.

1. Devices: a label actor given the GPU sees exactly it; an actor given none sees none.
2. One label actor against the same training step in a bare loop (no Ray), alternated.
3. Ten digit labels sharing the GPU by fractional shares (10 processes) against the same ten
   packed in one process: summed steps/s, and memory (torch's peak per label and nvidia-smi's
   device total, which includes every process's CUDA context).
4. A 32x32x3 synthetic data set at model.width 64, bf16 autocast on and off: steps/s, and
   whether the losses stay finite.

On a machine without a GPU it says so and exits 0. Run: `make gpu-check`.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from bench.packing import compare  # noqa: E402
from bench.throughput import LABEL, bench_config  # noqa: E402
from core.config import load_config  # noqa: E402
from workers.data import load_label  # noqa: E402
from workers.gan import WGANGP, use_fast_fixed_shape_kernels  # noqa: E402


def timed_steps(pair: WGANGP, seconds: float) -> tuple[float, bool]:
    """Generator steps/s after a warm-up, and whether every loss stayed finite."""
    for _ in range(3):  # warm-up: cuDNN autotuning, allocator
        pair.step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()  # the steady state, not cuDNN's autotuning workspaces
    n, finite, t0 = 0, True, time.monotonic()
    while time.monotonic() - t0 < seconds:
        stats = pair.step()
        n += 1
        if n % 50 == 0:
            finite &= bool(torch.isfinite(stats.tensor()).all())
    torch.cuda.synchronize()
    finite &= bool(torch.isfinite(stats.tensor()).all())
    return n / (time.monotonic() - t0), finite


def bare_digits(cfg, seconds: float) -> float:
    """The label actor's step with no Ray, on the same one CPU thread the actor gets."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        images = load_label(cfg.dataset, LABEL, "train")
        pair = WGANGP.build(cfg.model, cfg.train, images, torch.device("cuda"), seed=cfg.train.seed * 1000 + LABEL)
        return timed_steps(pair, seconds)[0]
    finally:
        torch.set_num_threads(threads)


def synthetic(amp: bool, seconds: float) -> tuple[float, bool, float]:
    """steps/s, finite losses, peak MB for a 32x32x3 data set at width 64."""
    cfg = load_config(None, ["model.width=64", f"train.amp={str(amp).lower()}", "dataset.image_size=32"])
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (5000, 3, 32, 32), generator=g, dtype=torch.uint8)
    pair = WGANGP.build(cfg.model, cfg.train, images, torch.device("cuda"), seed=0)
    rate, finite = timed_steps(pair, seconds)
    return rate, finite, torch.cuda.max_memory_allocated() / 2**20


def devices_row() -> str:
    import ray

    from workers.trainer import LabelTrainer

    cfg = load_config("experiments/digits.yaml", []).to_dict()
    remote = ray.remote(LabelTrainer)
    with_gpu = remote.options(num_gpus=1, num_cpus=1).remote("/tmp/wcgan-gpu-check", cfg, 0, "check")
    without = remote.options(num_gpus=0, num_cpus=1).remote("/tmp/wcgan-gpu-check", cfg, 1, "check")
    a, b = ray.get([with_gpu.placement.remote(), without.placement.remote()])
    ray.kill(with_gpu)
    ray.kill(without)
    return (f"actor with 1 GPU: Ray ids {a['gpu_ids']}, CUDA_VISIBLE_DEVICES={a['visible_gpus']!r}, torch sees "
            f"{a['cuda_devices']}; actor with 0 GPU: ids {b['gpu_ids']}, CUDA_VISIBLE_DEVICES={b['visible_gpus']!r}, "
            f"torch sees {b['cuda_devices']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=15.0, help="timed seconds of each bare/actor/amp measurement")
    parser.add_argument("--budget-s", type=float, default=30.0, help="budget of each 10-label run")
    parser.add_argument("--reps", type=int, default=2)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("gpu-check: no CUDA GPU on this machine; nothing to check (run it where a GPU is).")
        return 0
    import ray

    use_fast_fixed_shape_kernels(torch.device("cuda"))
    name = torch.cuda.get_device_name(0)
    cpus = os.cpu_count() or 1
    t_start = time.monotonic()
    print(f"gpu-check on {name}, {cpus} CPUs, torch {torch.__version__}, Ray {ray.__version__}", flush=True)
    ray.init(address="local", num_cpus=cpus, num_gpus=1, include_dashboard=False, log_to_driver=False)
    rows: list[tuple[str, str]] = []
    rows.append(("devices", devices_row()))
    print(rows[-1][1], flush=True)

    with tempfile.TemporaryDirectory() as storage:
        bare, actor = [], []
        for rep in range(args.reps):
            cfg = bench_config(storage, args.seconds, f"one-{rep}", ["resources.gpus_per_label=1", "resources.cpus_per_label=1"])
            bare.append(bare_digits(cfg, args.seconds))
            from orchestrator.run import train

            actor.append(train(cfg, evaluate=False).summaries[0]["steps_per_s"])
            print(f"  rep {rep + 1}: bare {bare[-1]:.1f}, actor {actor[-1]:.1f} steps/s", flush=True)
        b, a = statistics.median(bare), statistics.median(actor)
        rows.append(("label actor / bare loop (digits 8x8, width 16, 1 GPU)",
                     f"{a:.1f} / {b:.1f} steps/s = {a / b:.3f}"))

        res = compare(storage, args.budget_s, gpu=True, cpus=float(cpus), reps=args.reps)
        pl, pk = res["per_label"], res["packed"]
        rows.append(("10 digit labels, 10 actors x 0.1 GPU", f"{pl['steps_per_s']:.1f} steps/s in all; "
                     f"{pl['tensor_mb_per_label']:.0f} MB tensors/label; device peak {pl['device_mb']:.0f} MB"))
        rows.append(("10 digit labels, 1 packed actor x 1 GPU", f"{pk['steps_per_s']:.1f} steps/s in all; "
                     f"{pk['tensor_mb_per_label']:.0f} MB tensors/label; device peak {pk['device_mb']:.0f} MB; "
                     f"steps per label {pk['min_label_steps']}..{pk['max_label_steps']}"))
        rows.append(("packed / 10 actors", f"{pk['steps_per_s'] / pl['steps_per_s']:.3f} (steps/s), "
                     f"{pk['device_mb'] / max(pl['device_mb'], 1):.3f} (device memory)"))

    for amp in (False, True):
        rate, finite, peak = synthetic(amp, args.seconds)
        rows.append((f"32x32x3 synthetic, width 64, bf16 autocast {'on' if amp else 'off'}",
                     f"{rate:.1f} steps/s, losses finite: {finite}, peak {peak:.0f} MB tensors (steady state)"))
        print(rows[-1][1], flush=True)
    ray.shutdown()

    width = max(len(k) for k, _ in rows)
    print(f"\n== gpu-check: {name} ({time.monotonic() - t_start:.0f} s) ==")
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    ok = all("finite: True" in v for k, v in rows if k.startswith("32x32"))
    return 0 if ok and not math.isnan(a) else 1


if __name__ == "__main__":
    sys.exit(main())
