"""Ten digit labels as ten label actors against the same ten packed in one actor.

Both runs go through `orchestrator.run.train` on one Ray, with the same model, budget and
resources in total; the figure is the sum over labels of generator steps/s (each label's
steps over its own training time), so it measures what a pack costs or saves on this
machine. On a GPU the ten actors share it by fractional shares (1/10 each); on CPUs each
label gets `total CPUs / 10`. Run: `python bench/packing.py` (or through `make gpu-check`).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.config import load_config  # noqa: E402
from orchestrator.run import train  # noqa: E402


class GpuMemoryWatch:
    """Peak of nvidia-smi's memory.used while a run goes on: unlike torch's own counters it
    includes every process's CUDA context and cuDNN workspace."""

    def __init__(self, every_s: float = 0.5):
        self.every_s, self.peak_mb = every_s, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                                     capture_output=True, text=True, timeout=5).stdout
                self.peak_mb = max(self.peak_mb, float(out.split()[0]))
            except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
                return

    def __enter__(self) -> "GpuMemoryWatch":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def run_labels(storage: str, run_id: str, labels_per_actor: int, budget_s: float, gpu: bool,
               cpus: float, extra=()) -> dict:
    """One digits run of 10 labels; the sum of the labels' steps/s and memory figures."""
    n = 10
    share = [f"resources.gpus_per_label={1 / n:g}", f"resources.max_actors_per_gpu={n}"] if gpu else \
        ["resources.gpus_per_label=0"]
    cfg = load_config("experiments/digits.yaml", [
        f"run.storage={storage}", f"run.id={run_id}", "dataset.labels=all", f"train.budget_s={budget_s}",
        "train.checkpoint_every_s=1000", "metrics.enabled=false", f"resources.cpus_per_label={cpus / n:g}",
        f"resources.labels_per_actor={labels_per_actor}", *share, *extra])
    watch: Optional[GpuMemoryWatch] = GpuMemoryWatch() if gpu else None
    if watch:
        watch.__enter__()
    try:
        result = train(cfg, evaluate=False)
    finally:
        if watch:
            watch.__exit__()
    rates = [s["steps_per_s"] for s in result.summaries]
    peaks = [s.get("peak_gpu_mb") for s in result.summaries if s.get("peak_gpu_mb") is not None]
    return {"actors": result.plan.n_actors, "steps_per_s": sum(rates),
            "min_label_steps": min(s["steps"] for s in result.summaries),
            "max_label_steps": max(s["steps"] for s in result.summaries),
            "tensor_mb_per_label": statistics.median(peaks) if peaks else None,
            "device_mb": watch.peak_mb if watch else None}


def compare(storage: str, budget_s: float, gpu: bool, cpus: float, reps: int = 1, extra=()) -> dict:
    """Alternate per-label and packed runs `reps` times; medians of the summed steps/s."""
    per_label, packed = [], []
    for rep in range(reps):
        per_label.append(run_labels(storage, f"actors-{rep}", 1, budget_s, gpu, cpus, extra))
        packed.append(run_labels(storage, f"packed-{rep}", 10, budget_s, gpu, cpus, extra))
        print(f"  rep {rep + 1}/{reps}: 10 actors {per_label[-1]['steps_per_s']:.1f} steps/s, "
              f"1 packed actor {packed[-1]['steps_per_s']:.1f} steps/s", flush=True)
    med = lambda runs, key: statistics.median(r[key] for r in runs)  # noqa: E731
    return {"per_label": per_label[-1] | {"steps_per_s": med(per_label, "steps_per_s")},
            "packed": packed[-1] | {"steps_per_s": med(packed, "steps_per_s")}}


def main() -> None:
    import os

    import ray

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--budget-s", type=float, default=30.0)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    cpus = float(os.cpu_count() or 1)
    ray.init(address="local", num_cpus=int(cpus), include_dashboard=False, log_to_driver=False)
    with tempfile.TemporaryDirectory() as storage:
        res = compare(storage, args.budget_s, gpu=False, cpus=cpus, reps=args.reps)
    ray.shutdown()
    a, p = res["per_label"], res["packed"]
    print(f"\n10 digit labels on {cpus:g} CPUs, budget {args.budget_s:g}s, median of {args.reps}:")
    print(f"  10 label actors : {a['steps_per_s']:7.1f} generator steps/s in all")
    print(f"  1 packed actor  : {p['steps_per_s']:7.1f} generator steps/s in all "
          f"(steps per label {p['min_label_steps']}..{p['max_label_steps']})")
    print(f"  ratio packed/actors: {p['steps_per_s'] / a['steps_per_s']:.3f}")


if __name__ == "__main__":
    main()
