"""`make chaos`: a digits run under injected faults, then checks that nothing was lost.

A real `python -m orchestrator train` driver runs against a private local Ray head while a
seeded fault injector, through Ray's own APIs only, kills a random label actor at a random
moment N times, kills the collector once, and kills the driver once (SIGKILL) and re-runs the
same command. Afterwards:

* every label finished, the run exits 0 and its report exists;
* no budget was lost beyond one checkpoint interval per fault (measured as the training time
  a label had reported when it was killed minus the time of the checkpoint it resumed from),
  and none was counted twice (each label ends within one step of its budget);
* every history.csv has no step twice and no hole longer than a checkpoint interval;
* every kept checkpoint loads.

It runs one label per actor (the local CPU plan never packs), so a kill hits one label; packs
are not exercised here (their resume is tested in tests/test_packing.py).

    python -m orchestrator.chaos --kills 10 --seed 0
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import pandas as pd

from core.actors import NAMESPACE, collector_actor, label_actor, live_actors
from core.logs import configure as configure_logging
from core.rundir import RunDir, load_checkpoint
from orchestrator.local_head import LocalHead

logger = logging.getLogger("orchestrator.chaos")  # also when run as __main__

REPO = Path(__file__).resolve().parent.parent
RUN_ID = "chaos"


@dataclass
class Fault:
    kind: str                       # "label", "collector" or "driver"
    at_s: float                     # seconds after the start line opened (planned, then actual)
    label: Optional[int] = None
    survived: bool = False
    lost_s: dict[int, float] = field(default_factory=dict)  # label -> training time lost


@dataclass
class ChaosResult:
    faults: list[Fault]
    run_dir: Path
    problems: list[str]
    restarts: dict[int, int]

    @property
    def ok(self) -> bool:
        return not self.problems and all(f.survived for f in self.faults)

    def table(self) -> str:
        lost: dict[int, float] = {}
        for f in self.faults:
            for k, s in f.lost_s.items():
                lost[k] = lost.get(k, 0.0) + s
        rows = [{"fault": f.kind + (f" {f.label}" if f.label is not None else ""), "at_s": round(f.at_s, 1),
                 "survived": f.survived, "max_lost_s": round(max(f.lost_s.values()), 2) if f.lost_s else 0.0}
                for f in self.faults]
        per_label = pd.DataFrame({"label": sorted(self.restarts), "restarts": [self.restarts[k] for k in sorted(self.restarts)],
                                  "budget_lost_s": [round(lost.get(k, 0.0), 2) for k in sorted(self.restarts)]})
        return (f"faults injected: {len(self.faults)}, survived: {sum(f.survived for f in self.faults)}\n"
                + pd.DataFrame(rows).to_string(index=False) + "\n\n" + per_label.to_string(index=False)
                + ("\n\nproblems:\n  " + "\n  ".join(self.problems) if self.problems else "\n\nno problems found"))


class Chaos:
    def __init__(self, storage: Path, kills: int = 10, seed: int = 0, labels=(0, 1, 2), budget_s: float = 60.0,
                 checkpoint_every_s: float = 3.0, log_every_s: float = 1.0):
        self.storage, self.kills, self.rng = storage, kills, random.Random(seed)
        self.labels, self.budget_s = list(labels), budget_s
        self.checkpoint_every_s, self.log_every_s = checkpoint_every_s, log_every_s
        self.run = RunDir(storage / RUN_ID)
        self.driver: Optional[subprocess.Popen] = None
        self.head: Optional[LocalHead] = None

    # ------------------------------------------------------------------ the run under test

    def command(self) -> list[str]:
        sets = [f"run.storage={self.storage}", f"run.id={RUN_ID}", f"dataset.labels={self.labels}",
                f"train.budget_s={self.budget_s}", f"train.checkpoint_every_s={self.checkpoint_every_s}",
                f"train.log_every_s={self.log_every_s}", f"max_restarts={self.kills + 2}",
                "model.width=8", "model.z_dim=16", "train.batch_size=32", "train.n_critic=2",
                "metrics.samples_per_label=50", "metrics.kid_subsets=10", "metrics.is_splits=2"]
        return [sys.executable, "-m", "orchestrator", "train", "--config", "experiments/digits.yaml",
                *[a for s in sets for a in ("--set", s)]]

    def start_driver(self, log) -> None:
        env = dict(os.environ, RAY_ADDRESS=self.head.gcs_address, RAY_AUTH_MODE="token", PYTHONUNBUFFERED="1")
        self.driver = subprocess.Popen(self.command(), cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)

    # ------------------------------------------------------------------ looking at it

    def progress(self) -> dict[int, dict]:
        import ray

        try:
            collector = ray.get_actor(collector_actor(RUN_ID), namespace=NAMESPACE)
            return {int(k): v for k, v in ray.get(collector.progress.remote(), timeout=5).items()}
        except Exception:  # not there yet, restarting, or gone with a killed driver
            return {}

    def wait_for(self, condition, what: str, timeout_s: float = 180.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not condition():
            if self.driver is not None and self.driver.poll() is not None:
                raise RuntimeError(f"the driver exited (code {self.driver.returncode}) while waiting for {what}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what}: not within {timeout_s:g}s")
            time.sleep(0.2)

    def training(self) -> list[int]:
        return [k for k, s in self.progress().items() if s.get("state") == "training"
                and float(s.get("elapsed_s") or 0) < self.budget_s - 3 * self.checkpoint_every_s]

    # ------------------------------------------------------------------ the faults

    def plan(self) -> list[Fault]:
        """Kill times spread over the budget, seeded; the driver kill comes mid-way."""
        window = (0.15 * self.budget_s, 0.75 * self.budget_s)
        faults = [Fault("label", self.rng.uniform(*window)) for _ in range(self.kills)]
        faults.append(Fault("collector", self.rng.uniform(*window)))
        faults.append(Fault("driver", self.rng.uniform(0.3 * self.budget_s, 0.6 * self.budget_s)))
        return sorted(faults, key=lambda f: f.at_s)

    @staticmethod
    def elapsed_now(state: dict) -> float:
        """A label's training time now: its last report plus the time since (reports are a log interval apart)."""
        return float(state["elapsed_s"]) + max(0.0, time.time() - float(state.get("updated", time.time())))

    def kill_label(self, fault: Fault) -> None:
        import ray

        try:  # after a driver re-run the labels may still be loading: wait for one in training
            self.wait_for(lambda: bool(self.training()), "a label in training", timeout_s=60)
        except TimeoutError:
            logger.warning("no label in training at %.0fs: fault skipped", fault.at_s)
            return
        fault.label = k = self.rng.choice(self.training())
        state = self.progress()[k]
        restarts = int(state.get("restarts") or 0)
        ray.kill(ray.get_actor(label_actor(RUN_ID, k), namespace=NAMESPACE), no_restart=False)
        at_kill = self.elapsed_now(state)
        self.wait_for(lambda: int(self.progress().get(k, {}).get("restarts") or 0) > restarts,
                      f"label {k} back after a kill")
        fault.lost_s[k] = max(0.0, at_kill - float(self.progress()[k]["resumed_from_s"]))
        fault.survived = True

    def kill_collector(self, fault: Fault) -> None:
        import ray

        ray.kill(ray.get_actor(collector_actor(RUN_ID), namespace=NAMESPACE), no_restart=False)
        self.wait_for(lambda: bool(self.progress()), "the collector back after a kill")
        fault.survived = True

    def kill_driver(self, fault: Fault, log) -> None:
        before = self.progress()
        self.driver.kill()  # SIGKILL: no clean-up at all
        at_kill = {k: self.elapsed_now(v) for k, v in before.items() if v.get("state") == "training"}
        self.driver.wait()
        self.driver = None  # killed on purpose

        self.wait_for(lambda: not live_actors(RUN_ID), "the killed driver's actors to go")  # they die with their owner
        self.start_driver(log)  # the same command again: it resumes
        self.wait_for(lambda: all("resumed_from_s" in self.progress().get(k, {}) for k in self.labels),
                      "every label back after the driver was re-run")
        after = self.progress()
        # max(0, .): orphaned actors of a killed driver train on for the moment Ray takes to notice
        fault.lost_s = {k: max(0.0, at_kill[k] - float(after[k]["resumed_from_s"])) for k in at_kill}
        fault.survived = True

    # ------------------------------------------------------------------ the whole thing

    def execute(self) -> ChaosResult:
        import ray

        faults = self.plan()
        log_path = self.storage / "chaos-driver.log"
        self.storage.mkdir(parents=True, exist_ok=True)
        with LocalHead(num_cpus=2) as head, open(log_path, "w") as log:
            self.head = head
            ray.init(address=head.gcs_address, log_to_driver=False, logging_level="ERROR", configure_logging=False)
            try:
                self.start_driver(log)
                self.wait_for(self.run.started.exists, "the start line to open")
                t0 = time.monotonic()
                for fault in faults:
                    time.sleep(max(0.0, fault.at_s - (time.monotonic() - t0)))
                    fault.at_s = time.monotonic() - t0  # when it happened (recoveries delay the next)
                    logger.info("t=%5.1fs: killing the %s", fault.at_s, fault.kind)
                    {"label": self.kill_label, "collector": self.kill_collector,
                     "driver": lambda f: self.kill_driver(f, log)}[fault.kind](fault)
                code = self.driver.wait(timeout=self.budget_s + 600)
            finally:
                if self.driver is not None and self.driver.poll() is None:
                    self.driver.kill()
                ray.shutdown()
        problems = [] if code == 0 else [f"the driver exited with code {code} (log: {log_path})"]
        return ChaosResult(faults, self.run.path, problems + self.check(faults), self.restarts())

    def restarts(self) -> dict[int, int]:
        if not self.run.summary_csv.is_file():
            return {k: 0 for k in self.labels}
        summary = pd.read_csv(self.run.summary_csv)
        return {int(r.label): int(r.restarts) for r in summary.itertuples()}

    def check(self, faults: list[Fault]) -> list[str]:
        problems = []
        slack = self.checkpoint_every_s + 2 * self.log_every_s  # reports are up to one log interval old
        for f in faults:
            for k, lost in f.lost_s.items():
                if lost > slack:
                    problems.append(f"{f.kind} fault at {f.at_s:.0f}s: label {k} lost {lost:.1f}s of training "
                                    f"(more than a checkpoint interval, {self.checkpoint_every_s:g}s)")
        if not self.run.summary_csv.is_file():
            return problems + [f"no {self.run.summary_csv}"]
        summary = pd.read_csv(self.run.summary_csv)
        if sorted(summary["label"]) != self.labels:
            problems.append(f"labels finished: {sorted(summary['label'])}, expected {self.labels}")
        for r in summary.itertuples():
            step_s = 1.0 / r.steps_per_s if r.steps_per_s > 0 else 0.0
            if not (self.budget_s - step_s - 1e-6 <= r.elapsed_s <= self.budget_s + step_s + slack):
                problems.append(f"label {r.label}: trained {r.elapsed_s:.1f}s for a budget of {self.budget_s:g}s")
        for k in self.labels:
            history = pd.read_csv(self.run.history(k))
            if not history["step"].is_unique or not history["step"].is_monotonic_increasing:
                problems.append(f"label {k}: history.csv logs a step twice or out of order")
            holes = history["elapsed_s"].diff().dropna()
            if len(holes) and holes.max() > slack + self.log_every_s:
                problems.append(f"label {k}: history.csv has a {holes.max():.1f}s hole")
            for _, path in self.run.checkpoints(k):
                try:
                    load_checkpoint(path)
                except Exception as err:
                    problems.append(f"{path} does not load: {err}")
        if not self.run.report.is_file():
            problems.append(f"no {self.run.report}")
        return problems


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m orchestrator.chaos", description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=10, help="label actor kills (default 10)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--labels", default="0,1,2", help="labels of the digits run (default 0,1,2)")
    parser.add_argument("--budget-s", type=float, default=90.0, help="training budget per label (default 90)")
    parser.add_argument("--checkpoint-every-s", type=float, default=3.0)
    parser.add_argument("--storage", default=None, help="where the run goes (default: a temporary folder)")
    parser.add_argument("--json", default=None, help="also write the result as JSON to this file")
    args = parser.parse_args(argv)
    configure_logging()
    # The local head keeps Ray's token authentication on; this process and the driver send the token.
    # (Set before Ray is imported: Ray reads the auth mode once per process.)
    os.environ["RAY_AUTH_MODE"] = "token"
    with tempfile.TemporaryDirectory(prefix="wcgan-chaos-") as tmp:
        storage = Path(args.storage).resolve() if args.storage else Path(tmp)
        labels = [int(k) for k in args.labels.split(",")]
        result = Chaos(storage, kills=args.kills, seed=args.seed, labels=labels, budget_s=args.budget_s,
                       checkpoint_every_s=args.checkpoint_every_s).execute()
        print(result.table())
        if args.json:
            Path(args.json).write_text(json.dumps({
                "ok": result.ok, "problems": result.problems, "restarts": result.restarts,
                "faults": [{"kind": f.kind, "at_s": f.at_s, "label": f.label, "survived": f.survived,
                            "lost_s": f.lost_s} for f in result.faults]}, indent=2))
    return 0 if result.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
