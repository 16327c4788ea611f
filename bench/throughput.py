"""Label-actor throughput against a bare in-process loop, and command-to-first-step latency.

Both sides drive the same WGANGP class with the same model, batch and thread
count, alternating A/B so machine noise hits both; medians are reported.
Run: `make bench` (or `python bench/throughput.py --reps 5 --seconds 20`).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import ray
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.config import load_config  # noqa: E402
from orchestrator.run import train  # noqa: E402
from workers.data import load_label  # noqa: E402
from workers.gan import WGANGP, pick_device, use_fast_fixed_shape_kernels  # noqa: E402

LABEL = 3


def bench_config(storage: str, seconds: float, run_id: str, extra=()):
    return load_config("experiments/digits.yaml", [
        f"run.storage={storage}", f"run.id={run_id}", f"dataset.labels=[{LABEL}]",
        f"train.budget_s={seconds}", "train.checkpoint_every_s=1000", "train.log_every_s=5",
        "resources.cpus_per_label=1", "metrics.enabled=false", *extra,
    ])


def bare_loop(cfg, seconds: float) -> float:
    """Generator steps/s of the same training step with no Ray in the way."""
    torch.set_num_threads(1)
    images = load_label(cfg.dataset, LABEL, "train")
    device = pick_device()
    use_fast_fixed_shape_kernels(device)  # as the label actor does
    gan = WGANGP.build(cfg.model, cfg.train, images, device, seed=cfg.train.seed * 1000 + LABEL)
    gan.step()  # warm-up, as the actor's set-up is not counted either
    gan.generator_steps = 0
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        gan.step()
    return gan.generator_steps / (time.monotonic() - t0)


def actor_loop(cfg) -> float:
    result = train(cfg, evaluate=False)
    return result.summaries[0]["steps_per_s"]


def first_step_latency(storage: str) -> float:
    """Seconds from launching `python -m orchestrator train` to the first training step."""
    t0 = time.time()
    subprocess.run([sys.executable, "-m", "orchestrator", "train", "--config", "experiments/digits.yaml",
                    "--set", f"run.storage={storage}", "--set", "run.id=latency", "--set", "train.budget_s=3",
                    "--set", "metrics.enabled=false"],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    summary = pd.read_csv(Path(storage) / "latency" / "summary.csv")
    return float(summary["first_step_unix"].min()) - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=15.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as storage:
        print("command -> first training step (10 labels, fresh local Ray): ", end="", flush=True)
        latency = first_step_latency(storage)
        print(f"{latency:.1f}s")
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        bare, actor = [], []
        for rep in range(args.reps):
            cfg = bench_config(storage, args.seconds, f"bench-{rep}")
            bare.append(bare_loop(cfg, args.seconds))
            actor.append(actor_loop(cfg))
            print(f"  rep {rep + 1}/{args.reps}: bare {bare[-1]:.2f} steps/s, actor {actor[-1]:.2f} steps/s",
                  flush=True)
        ray.shutdown()
    ipstep = cfg.train.batch_size * cfg.train.n_critic
    b, a = statistics.median(bare), statistics.median(actor)
    print(f"\nlabel actor vs bare loop (digits, width {cfg.model.width}, batch {cfg.train.batch_size}, "
          f"1 thread, {args.reps} x {args.seconds:g}s, medians):")
    print(f"  bare loop : {b:8.2f} generator steps/s  {b * ipstep:9.0f} images/s")
    print(f"  label actor: {a:8.2f} generator steps/s  {a * ipstep:9.0f} images/s")
    print(f"  ratio actor/bare: {a / b:.3f}  (target >= 0.98)")
    print(f"  command -> first step: {latency:.1f}s")


if __name__ == "__main__":
    main()
