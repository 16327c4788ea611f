"""Label actors against bare loops, fairly: each bare loop is a process of its own with the actor's
model, batch, thread count and niceness, and the two alternate so machine noise hits both.

1. One label: a label actor (`wcgan train` of one label) against one bare process, `--reps`
   times alternated; medians and their ratio (target >= 0.98).
2. Many labels: N label actors (one run of N labels) against N bare processes started
   together (N = 10, the demo's), summed steps/s; medians and the ratio (target >= 0.95);
   and the same N labels in the default (auto) layout, which on CPUs packs them one actor
   per core.
3. Start-up: command -> every label's first step for the 10-label demo, in the auto layout
   and with one actor per label, with the driver's breakdown (driver start, Ray start,
   actor processes up, data loaded, start line and pre-flight).

Run: `make bench` (or `python bench/throughput.py --reps 5 --seconds 15`).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LABEL = 3


def bench_config(storage: str, seconds: float, run_id: str, extra=(), labels=(LABEL,)):
    from core.config import load_config

    return load_config(str(ROOT / "experiments/digits.yaml"), [
        f"run.storage={storage}", f"run.id={run_id}", "dataset.labels=[" + ",".join(map(str, labels)) + "]",
        f"train.budget_s={seconds}", "train.checkpoint_every_s=1000", "train.log_every_s=5", "metrics.every_s=null",
        "metrics.enabled=false", *extra])


def bare_worker(label: int, seconds: float, threads: int, nice: int) -> None:
    """The label actor's step with no Ray: prints {"steps_per_s": ...} (run as its own process)."""
    import torch

    from workers.data import load_label
    from workers.gan import WGANGP, pick_device, use_fast_fixed_shape_kernels

    os.nice(nice - os.nice(0))
    torch.set_num_threads(threads)
    cfg = bench_config(tempfile.gettempdir(), seconds, "bare")
    device = pick_device()
    use_fast_fixed_shape_kernels(device)  # as the label actor does
    gan = WGANGP.build(cfg.model, cfg.train, load_label(cfg.dataset, label, "train"), device,
                       seed=cfg.train.seed * 1000 + label)
    gan.step()  # warm-up, as the actor's set-up is not counted either
    start = gan.generator_steps
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        gan.step()
    print(json.dumps({"steps_per_s": (gan.generator_steps - start) / (time.monotonic() - t0)}), flush=True)


def bare_processes(labels, seconds: float, threads: int, nice: int) -> list[float]:
    """Steps/s of one bare process per label, all started together."""
    procs = [subprocess.Popen([sys.executable, __file__, "--bare-worker", str(k), "--seconds", str(seconds),
                               "--threads", str(threads), "--nice", str(nice)],
                              stdout=subprocess.PIPE, text=True, cwd=ROOT) for k in labels]
    out = [p.communicate()[0] for p in procs]
    if any(p.returncode for p in procs):
        raise RuntimeError(f"a bare process failed: {out}")
    return [json.loads(o.strip().splitlines()[-1])["steps_per_s"] for o in out]


def actor_run(storage: str, run_id: str, labels, seconds: float, resources: list[str]) -> list[float]:
    from orchestrator.run import train

    cfg = bench_config(storage, seconds, run_id, resources, labels)
    return [s["steps_per_s"] for s in train(cfg, evaluate=False).summaries]


def worker_niceness() -> int:
    """The niceness Ray gives its worker processes (RAY_worker_niceness), read inside one."""
    import ray

    return ray.get(ray.remote(num_cpus=0)(lambda: os.nice(0)).remote())


def startup_breakdown(storage: str, run_id: str, sets: list[str] = ()) -> dict:
    """Command -> first step of the 10-label demo, from the run's own clocks, and the driver's
    own start-up line (where the time went)."""
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-m", "orchestrator", "train", "--config", "experiments/digits.yaml",
                           "--set", f"run.storage={storage}", "--set", f"run.id={run_id}", "--set", "train.budget_s=3",
                           "--set", "metrics.enabled=false", *[a for s in sets for a in ("--set", s)]],
                          check=True, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    import pandas as pd

    run = Path(storage) / run_id
    summary = pd.read_csv(run / "summary.csv")
    started = float((run / ".started").read_text()) if (run / ".started").is_file() else float("nan")
    line = next((ln.split("start-up: ", 1)[1] for ln in proc.stderr.splitlines() if "start-up: " in ln), "(none)")
    return {"first_step_s": float(summary["first_step_unix"].max()) - t0, "start_line_s": started - t0,
            "breakdown": line, "actors": int(summary["labels_in_actor"].count() / summary["labels_in_actor"].max())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--labels", type=int, default=10, help="N of the many-label case")
    parser.add_argument("--bare-worker", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--nice", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare_worker is not None:
        bare_worker(args.bare_worker, args.seconds, args.threads, args.nice)
        return
    import ray

    cpus = os.cpu_count() or 1
    layouts = {"auto": [], "one actor per label": ["resources.labels_per_actor=1"]}
    with tempfile.TemporaryDirectory() as storage:
        print("start-up of the 10-label demo (fresh local Ray each):", flush=True)
        starts = {}
        for i, (name, sets) in enumerate(layouts.items()):
            starts[name] = s = startup_breakdown(storage, f"latency-{i}", sets)
            print(f"  {name} ({s['actors']} actors): start line {s['start_line_s']:.1f}s, every label's first step "
                  f"{s['first_step_s']:.1f}s\n    {s['breakdown']}", flush=True)
        ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False)
        nice = worker_niceness()
        one_bare, one_actor, many_bare, many_actor, many_packed = [], [], [], [], []
        many = list(range(args.labels))
        for rep in range(args.reps):
            one_bare += bare_processes([LABEL], args.seconds, 1, nice)
            one_actor += actor_run(storage, f"one-{rep}", [LABEL], args.seconds, ["resources.cpus_per_label=1"])
            many_bare.append(sum(bare_processes(many, args.seconds, 1, nice)))
            many_actor.append(sum(actor_run(storage, f"many-{rep}", many, args.seconds,
                                            [f"resources.cpus_per_label={cpus / len(many):g}"])))
            many_packed.append(sum(actor_run(storage, f"packed-{rep}", many, args.seconds, [])))
            print(f"  rep {rep + 1}/{args.reps}: one label bare {one_bare[-1]:.2f} / actor {one_actor[-1]:.2f} "
                  f"steps/s; {len(many)} labels bare {many_bare[-1]:.1f} / actors {many_actor[-1]:.1f} / "
                  f"auto layout {many_packed[-1]:.1f}", flush=True)
        ray.shutdown()
    med = statistics.median
    print(f"\nlabel actors vs bare processes (digits, 1 thread each, niceness {nice} both, {args.reps} x "
          f"{args.seconds:g}s alternated, medians):")
    print(f"  one label   : actor {med(one_actor):7.2f} / bare {med(one_bare):7.2f} steps/s = "
          f"{med(one_actor) / med(one_bare):.3f}  (target >= 0.98)")
    print(f"  {len(many)} labels   : actors {med(many_actor):7.1f} / bare {med(many_bare):7.1f} steps/s in all = "
          f"{med(many_actor) / med(many_bare):.3f}  (one actor per label; target >= 0.95)")
    print(f"  {len(many)} labels   : auto layout {med(many_packed):7.1f} / bare {med(many_bare):7.1f} steps/s in all = "
          f"{med(many_packed) / med(many_bare):.3f}  (one actor per core, labels packed)")
    for name, s in starts.items():
        print(f"  command -> start line {s['start_line_s']:.1f}s, -> every label's first step "
              f"{s['first_step_s']:.1f}s ({name}, {s['actors']} actors; target < 15s)")


if __name__ == "__main__":
    main()
