"""The per-label training recipe, measured at the CPU demo's wall-clock share.

Why: `experiments/digits.yaml` trains 10 labels for 120 s on 2 cores, so each label gets about
24 core-seconds. Whether its recipe (lr, betas, n_critic, width, batch, EMA) is the best use of
those seconds is a question of measurement, not of papers that trained for hours. This sweep
trains one label's WGAN-GP pair per trial with the project's own code (config schema, data,
pair, budgeted loop, classifier feature space, FID), without Ray: each (recipe, label, seed)
trial is a fresh process with one torch thread, on the CPU, for `--budget-s` seconds.

How to read it: one row per recipe, best first, by the median over labels x seeds of the
label's FID (its generated images against its real training images, in the classifier's
feature space, a fixed number of samples and fixed noise: compare rows with each other, not
with Inception FIDs). `FID / default` below 1 beats the current default. `steps` shows what the
recipe buys within the budget. The real floor in the header (a label's held-out images against
its training images) gives the scale; it is computed from fewer images (about 36) than a
trial's samples, so it reads high. Trials share the machine: on a loaded machine every recipe
gets fewer steps, so compare rows of one sweep only.

    python bench/recipe_sweep.py                          # the default grid (make recipe-sweep)
    python bench/recipe_sweep.py --grid train.lr=1e-4,2e-4 model.ema=false,true --labels 0,4,8
"""

from __future__ import annotations

import argparse
import csv
import itertools
import os
import platform
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pandas as pd  # noqa: E402
import torch  # noqa: E402

from core.config import Config, load_config  # noqa: E402
from core.errors import ConfigError  # noqa: E402
from metrics.features import build_feature_space  # noqa: E402
from metrics.scores import fid  # noqa: E402
from metrics.scoring import extract_all, real_outputs, sample_label  # noqa: E402
from workers.data import describe, load_label  # noqa: E402
from workers.gan import WGANGP  # noqa: E402
from workers.loop import BudgetedLoop  # noqa: E402
from workers.sampler import Sampler  # noqa: E402

CONFIG = ROOT / "experiments" / "digits.yaml"
CPU = torch.device("cpu")

# One axis at a time around digits.yaml (width 16, batch 64, n_critic 2, lr 1e-3, betas
# [0.5, 0.9], EMA on: the winner of this sweep's first runs, README), and two references.
DEFAULT_GRID: tuple[tuple[str, ...], ...] = (
    (),
    ("train.lr=0.0002",), ("train.lr=0.0005",), ("train.lr=0.002",),
    ("train.betas=[0.0,0.9]",),
    ("train.n_critic=1",), ("train.n_critic=3",), ("train.n_critic=5",),
    ("model.width=8",), ("model.width=32",),
    ("train.batch_size=32",), ("train.batch_size=128",),
    ("model.ema=false",),
    ("train.lr=0.0002", "train.n_critic=5", "model.ema=false"),  # the demo's recipe before the sweep
    ("train.lr=0.0001", "train.betas=[0.0,0.9]", "train.n_critic=5", "model.ema=false"),  # Gulrajani et al.
)


@dataclass(frozen=True)
class Recipe:
    overrides: tuple[str, ...]
    default: bool = False   # resolves to the config as it is

    @property
    def name(self) -> str:
        text = " ".join(self.overrides)
        return f"{text} (default)" if self.default and text else text or "(default)"


# ------------------------------------------------------------------ recipes

def split_values(text: str) -> list[str]:
    """`1e-4,2e-4` -> ['1e-4', '2e-4']; commas inside brackets stay (`[0.0,0.9],[0.5,0.9]`)."""
    values, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += {"[": 1, "]": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            values.append(text[start:i])
            start = i + 1
    values.append(text[start:])
    if not all(v.strip() for v in values):
        raise ConfigError(f"--grid {text!r}: empty value")
    return [v.strip() for v in values]


def product_grid(axes: list[str]) -> list[tuple[str, ...]]:
    """`['train.lr=1e-4,2e-4', 'model.ema=false,true']` -> the 4 override tuples of their product."""
    choices = []
    for axis in axes:
        key, sep, values = axis.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--grid {axis!r}: expected axis=v1,v2, e.g. train.lr=1e-4,2e-4")
        choices.append([f"{key.strip()}={v}" for v in split_values(values)])
    return [tuple(c) for c in itertools.product(*choices)]


def recipe_key(cfg: Config) -> tuple:
    """What a recipe decides: the model and the training step (not the budget or the seed)."""
    return tuple(sorted(cfg.model.model_dump().items())), tuple(sorted(cfg.train.model_dump().items()))


def resolve_recipes(config: Path, grid: list[tuple[str, ...]]) -> list[Recipe]:
    """Validated recipes, duplicates (same resolved config) dropped; the default first if the grid lacks it."""
    base = recipe_key(load_config(config))
    recipes, seen = [], set()
    for overrides in grid:
        key = recipe_key(load_config(config, list(overrides)))  # a bad recipe fails here, as in a run
        if key not in seen:
            seen.add(key)
            recipes.append(Recipe(overrides, default=key == base))
    if base not in seen:
        recipes.insert(0, Recipe((), default=True))
    return recipes


# ------------------------------------------------------------------ one trial (its own process)

def trial_config(spec: dict) -> Config:
    return load_config(spec["config"], [*spec["overrides"], f"dataset.labels=[{spec['label']}]",
                                        f"train.budget_s={spec['budget_s']}", f"train.seed={spec['seed']}"])


def train_pair(cfg: Config, label: int) -> tuple[WGANGP, float]:
    """One label's pair trained for the budget, as a label actor does (same seed rule, same loop)."""
    pair = WGANGP.build(cfg.model, cfg.train, load_label(cfg.dataset, label, "train"), CPU,
                        seed=cfg.train.seed * 1000 + label)
    t = cfg.train
    loop = BudgetedLoop(pair, t.budget_s, max_steps=t.max_steps, log_every_s=t.log_every_s,
                        checkpoint_every_s=t.checkpoint_every_s)
    result = loop.run(on_log=lambda row: None, on_checkpoint=lambda *a: None)
    return pair, result.trained_s


def score_pair(pair: WGANGP, cfg: Config, label: int, storage: str, samples: int) -> dict:
    """FID against the label's training images and class accuracy, in the classifier's space."""
    space = build_feature_space(cfg, storage, device=CPU)
    size = describe(cfg.dataset, check_files=False).image_size
    batch = cfg.metrics.batch_size
    real = real_outputs(space, cfg.dataset, label, "train", size, batch)["features"]
    generator = pair.generator_ema if pair.generator_ema is not None else pair.generator  # model.ema scores the average
    sampler = Sampler({label: generator}, pair.z_dim, CPU)
    images = torch.cat(list(sample_label(sampler, label, samples, cfg.metrics.seed, batch)))
    fake = extract_all(space, images, batch)
    hits = (fake["class_logits"].argmax(1) == label).float().mean()
    return {"fid": fid(real, fake["features"]), "class_accuracy": float(hits),
            "n_fake": len(images), "n_real": len(real)}


def run_trial(spec: dict) -> dict:
    t0 = time.monotonic()
    torch.set_num_threads(1)
    cfg = trial_config(spec)
    pair, trained_s = train_pair(cfg, spec["label"])
    scores = score_pair(pair, cfg, spec["label"], spec["storage"], spec["samples"])
    return {"steps": pair.generator_steps, "trained_s": round(trained_s, 2), **scores,
            "seconds": round(time.monotonic() - t0, 1)}


# ------------------------------------------------------------------ the sweep

def cpu_model() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or platform.machine()
    return next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), platform.machine())


def real_floor(space, cfg: Config, labels: list[int]) -> str:
    """Each label's held-out images against its training images: what real data scores."""
    size = describe(cfg.dataset, check_files=False).image_size
    parts = []
    for k in labels:
        train, test = (real_outputs(space, cfg.dataset, k, split, size, cfg.metrics.batch_size)["features"]
                       for split in ("train", "test"))
        parts.append(f"{k}: {fid(train, test):.3f} ({len(test)} vs {len(train)})")
    return ", ".join(parts)


def print_facts(args, recipes: list[Recipe], space, cfg: Config) -> None:
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    n_trials = len(recipes) * len(args.labels) * len(args.seeds)
    print(f"# recipe sweep: {args.config.name}, one label's WGAN-GP pair per trial, no Ray")
    print(f"machine: {os.cpu_count()} CPUs ({usable} usable), {cpu_model()}, load average "
          f"{os.getloadavg()[0]:.2f} at start; python {platform.python_version()}, torch {torch.__version__}")
    print(f"per trial: {args.budget_s:g} s wall-clock of training on the CPU, 1 torch thread, own process; "
          f"{args.jobs} trial(s) at a time")
    print(f"scoring: {args.samples} generated images per trial (noise seed {cfg.metrics.seed}) against the "
          f"label's training images, {space.title}")
    print(f"real floor, FID of held-out vs training images per label: {real_floor(space, cfg, args.labels)}")
    print(f"trials: {len(recipes)} recipes x labels {args.labels} x seeds {args.seeds} = {n_trials} "
          f"(at least {n_trials * args.budget_s / args.jobs / 60:.1f} min)\n", flush=True)


def trial_specs(args, recipes: list[Recipe], storage: str) -> list[tuple[Recipe, dict]]:
    """Recipes innermost, so every recipe's trials are spread over the sweep (and its machine noise)."""
    return [(r, {"config": str(args.config), "overrides": r.overrides, "label": k, "seed": s,
                 "budget_s": args.budget_s, "storage": storage, "samples": args.samples})
            for s in args.seeds for k in args.labels for r in recipes]


CSV_FIELDS = ["recipe", "default", "label", "seed", "budget_s", "steps", "trained_s", "fid", "class_accuracy",
              "n_fake", "n_real", "seconds", "error"]


def run_trials(args, recipes: list[Recipe], storage: str) -> pd.DataFrame:
    """Every trial in a fresh spawned process (CPU only, one thread); one progress line and one CSV row each."""
    specs = trial_specs(args, recipes, storage)
    rows = []
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", newline="") as f, ProcessPoolExecutor(
            args.jobs, mp_context=get_context("spawn"), max_tasks_per_child=1) as pool:
        writer = csv.DictWriter(f, CSV_FIELDS)
        writer.writeheader()
        futures = {pool.submit(run_trial, spec): (r, spec) for r, spec in specs}
        for i, done in enumerate(as_completed(futures), 1):
            recipe, spec = futures[done]
            row = {"recipe": recipe.name, "default": recipe.default, "label": spec["label"], "seed": spec["seed"],
                   "budget_s": spec["budget_s"], "error": ""}
            try:
                row.update(done.result())
                outcome = (f"{row['steps']} steps, FID {row['fid']:.3f}, class acc {row['class_accuracy']:.3f} "
                           f"({row['seconds']:.0f} s)")
            except Exception as err:  # a diverged or broken recipe: recorded, the sweep goes on
                row["error"] = f"{type(err).__name__}: {err}"
                outcome = f"FAILED {row['error']}"
            writer.writerow(row)
            f.flush()
            rows.append(row)
            print(f"[{i}/{len(specs)}] {recipe.name}, label {spec['label']} seed {spec['seed']}: {outcome}",
                  flush=True)
    return pd.DataFrame(rows, columns=CSV_FIELDS)


def calibrated_budget(args, default: "Recipe", storage: str, probe_s: float = 8.0) -> float:
    """The budget at which the default recipe trains about `args.match_steps` steps here, from
    `args.jobs` probe trials run at once (so they are as loaded as the sweep's)."""
    specs = [{**spec, "budget_s": probe_s, "samples": 2} for _, spec in
             trial_specs(argparse.Namespace(**{**vars(args), "budget_s": probe_s}), [default], storage)]
    specs = (specs * args.jobs)[:args.jobs]
    with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn"), max_tasks_per_child=1) as pool:
        rates = [r["steps"] / r["trained_s"] for r in pool.map(run_trial, specs)]
    rate = statistics.median(rates)
    budget = round(args.match_steps / rate, 1)
    print(f"calibration: the default recipe trains {rate:.1f} steps/s here ({args.jobs} at once, median); "
          f"--budget-s {budget:g} for about {args.match_steps} steps", flush=True)
    return budget


def summary_table(trials: pd.DataFrame) -> str:
    """One markdown row per recipe, by median FID; FID relative to the default recipe's median."""
    ok = trials[trials["error"] == ""]
    g = ok.groupby("recipe")
    table = pd.DataFrame({"steps": g["steps"].median(), "fid": g["fid"].median(),
                          "acc": g["class_accuracy"].median(), "ok": g.size()})
    table = table.reindex(trials["recipe"].unique())
    table["ok"] = table["ok"].fillna(0)
    table["n"] = trials.groupby("recipe").size()
    default_fid = table.loc[trials.loc[trials["default"], "recipe"].iloc[0], "fid"]
    table["rel"] = table["fid"] / default_fid
    table = table.sort_values("fid", na_position="last")
    lines = ["| recipe | generator steps | FID | class accuracy | FID / default | trials |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for name, r in table.iterrows():
        lines.append(f"| {name} | {r['steps']:.0f} | {r['fid']:.3f} | {r['acc']:.3f} | {r['rel']:.2f} | "
                     f"{int(r['ok'])}/{int(r['n'])} |")
    return "\n".join(lines)


def int_list(text: str) -> list[int]:
    return [int(v) for v in text.split(",")]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, default=CONFIG, help="the base recipe (default: experiments/digits.yaml)")
    p.add_argument("--grid", nargs="+", metavar="AXIS=V1,V2",
                   help="sweep the product of these axes instead of the default grid (the default recipe is "
                        "added when the product lacks it)")
    p.add_argument("--labels", type=int_list, default=[0, 4, 8], help="comma-separated (default 0,4,8)")
    p.add_argument("--seeds", type=int_list, default=[0, 1], help="train.seed values (default 0,1)")
    p.add_argument("--budget-s", type=float, default=24.0,
                   help="wall-clock training per trial (default 24: the demo's 120 s x 2 cores / 10 labels)")
    p.add_argument("--match-steps", type=int, default=None, metavar="N",
                   help="on another machine: first time the default recipe (--jobs trials at once, as loaded as "
                        "the sweep) and set --budget-s so that it trains about N generator steps (the demo's "
                        "share on 2 cores is about 400)")
    p.add_argument("--samples", type=int, default=500, help="generated images scored per trial")
    p.add_argument("--jobs", type=int, default=2, help="trials at a time, one process and one thread each")
    p.add_argument("--cache", type=Path, default=None,
                   help="where the classifier is cached (<cache>/_classifiers/; default: a temporary directory)")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "recipe-sweep.csv", help="every trial, as CSV")
    args = p.parse_args(argv)
    if args.budget_s <= 0 or args.jobs < 1 or args.samples < 2:
        p.error("--budget-s must be > 0, --jobs >= 1 and --samples >= 2")
    return args


def sweep(args, storage: str) -> None:
    os.environ["CUDA_VISIBLE_DEVICES"] = ""  # inherited by the trials: this is the CPU demo's share
    os.environ["OMP_NUM_THREADS"] = "1"
    recipes = resolve_recipes(args.config, product_grid(args.grid) if args.grid else list(DEFAULT_GRID))
    cfg = load_config(args.config, [f"dataset.labels={args.labels}"])
    describe(cfg.dataset, check_files=False)  # labels out of range fail before any trial
    space = build_feature_space(cfg, storage, device=CPU)  # trains and caches the classifier, once
    if args.match_steps:
        args.budget_s = calibrated_budget(args, next(r for r in recipes if r.default), storage)
    print_facts(args, recipes, space, cfg)
    trials = run_trials(args, recipes, storage)
    print(f"\n{summary_table(trials)}\n\nall trials: {args.out}", flush=True)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        if args.cache is not None:
            sweep(args, str(args.cache))
        else:
            with tempfile.TemporaryDirectory(prefix="recipe-sweep-") as storage:
                sweep(args, storage)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
