"""`wcgan compare`: the per-label ensemble against one data-parallel conditional GAN, same budget, same devices,
in two regimes.

    wcgan compare --config experiments/digits.yaml --set train.budget_s=60 [--regime shared|matched|both]

* ``shared``: every configured label trains at once, the labels sharing the cluster's devices (the
  way ``wcgan train`` runs), against the baseline on the devices the ensemble held.
* ``matched`` (the paper's regime): N labels on N devices, one label per device, against the
  baseline with N workers, one per device, trained on the same N labels. N is the cluster's whole
  GPUs (whole CPUs when the shared regime trains on CPUs), at most the configured labels; the
  labels are the first N configured.

Writes ``<run.storage>/<run.name>-compare-<timestamp>/`` (or ``<run.storage>/<run.id>/`` when
``run.id`` is set, which also resumes an interrupted comparison)::

    shared/ensemble/  a normal per-label run (labels/<k>/ckpt-*.pt, results.csv, report.md, ...)
    shared/baseline/  the conditional WGAN-GP run (baseline/ckpt-*.pt, results.csv, report.md, ...)
    matched/ensemble/, matched/baseline/   the same for the matched regime
    _classifiers/     the classifier feature space every run is scored in (digits / small images)
    comparison.csv    one row per regime and method
    fid_vs_time.png   FID against training wall-clock time, one panel per regime, one line per method
    report.md         a section per regime

Fairness rules, applied in each regime and stated in the report:

* Same data, labels, resolution, ``model.width`` / ``z_dim`` (each label's network in the
  ensemble has the architecture of the conditional network, which adds the label embeddings),
  the same ``train`` hyper-parameters (lr, betas, n_critic, gp_weight, batch size per worker
  and per label) and the same ``train.budget_s`` of training wall-clock time.
* Same devices: the baseline's Ray Train workers together hold exactly the CPUs and GPUs the
  ensemble's label actors held. With GPUs, one worker per GPU the ensemble occupied
  (``ceil(gpus_per_label x labels)``, each worker the equal share of that total, so one worker
  per physical GPU and NCCL); without GPUs, one worker per whole CPU of the ensemble's total
  (``floor(cpus_per_label x labels)``, gloo), each worker the equal share of the CPUs. In the
  matched regime the ensemble holds one device per label (``labels_per_actor=1`` and
  ``gpus_per_label=1``, or ``gpus_per_label=0`` and ``cpus_per_label=1``), so this rule gives the
  baseline one worker per device, N in all.
* Same scoring: one feature extractor (the same cached classifier, or Inception, shared by both
  regimes), the same number of samples per label drawn with the same noise, the same evaluation
  times (``metrics.every_s``), via ``metrics.evaluate.evaluate_run`` on each run directory. FIDs of
  the two regimes cover different label sets: compare methods within a regime, not across.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

import pandas as pd

from core import fmt
from core.config import Config, dump_config
from core.errors import PlacementError
from core.rundir import RunDir, write_csv, write_text
from core.storage import join, local_path, uri_of
from metrics.evaluate import evaluate_run
from metrics.plots import plot_fid_vs_time
from metrics.results import read_results, rows, value
from orchestrator.args import config_from_args
from orchestrator.baseline import train_baseline
from orchestrator.cluster import alive_nodes, connect
from orchestrator.preflight import check_storage
from orchestrator.resources import BaselinePlan, ResourcePlan, bundles_that_fit, plan_baseline, plan_resources
from orchestrator.run import train, with_chosen_width
from workers.data import describe
from workers.models import build_models, count_parameters

logger = logging.getLogger(__name__)

COMPARISON_COLUMNS = ["regime", "method", "fid", "is_mean", "is_std", "kid_mean", "mean_class_fid",
                      "class_accuracy", "images_per_s", "device_seconds", "budget_s", "n_fake", "feature_space"]
EXTRA_COLUMNS = ["labels", "device", "workers", "steps", "train_s", "generator_params", "critic_params",
                 "classifier_accuracy", "real_floor_fid"]
METHODS = ("ensemble", "baseline")
REGIMES = ("shared", "matched")


# ------------------------------------------------------------------ the two regimes

@dataclass(frozen=True)
class Regime:
    """One side-by-side: the config both methods train with and the devices each holds."""

    name: str
    cfg: Config
    labels: list[int]
    plan: ResourcePlan
    baseline: BaselinePlan

    @property
    def kind(self) -> str:
        return "GPU" if self.plan.gpus_per_actor > 0 else "CPU"

    def title(self) -> str:
        """What the regime pits against what, in a few words (plot panels, report headings, progress)."""
        n = len(self.labels)
        if self.name == "matched":
            return f"matched: {n} labels on {n} {self.kind}s, one each"
        return f"shared: {n} labels sharing {self.baseline.num_workers} {self.kind}s"  # the devices they occupy


def device_count(nodes: list[dict[str, float]], use_gpu: bool) -> int:
    """The cluster's whole GPUs, or its whole CPUs (counted per node: a device never spans nodes)."""
    return bundles_that_fit(nodes, 1.0, 0.0) if use_gpu else bundles_that_fit(nodes, 0.0, 1.0)


def matched_config(cfg: Config, labels: list[int], nodes: list[dict[str, float]], use_gpu: bool) -> Config:
    """`cfg` narrowed to the paper's regime: the first N labels, one actor per label holding one GPU
    (its CPUs as configured) or one whole CPU, N the devices of that kind (at most the labels)."""
    n = min(len(labels), device_count(nodes, use_gpu))
    if n < 1:
        raise PlacementError(f"the matched regime needs a whole {'GPU' if use_gpu else 'CPU'} on one node; "
                             f"the cluster has none. Use --regime shared.")
    data = cfg.to_dict()
    data["dataset"]["labels"] = list(labels[:n])
    data["resources"].update(labels_per_actor=1, gpus_per_label=1.0 if use_gpu else 0.0)
    if not use_gpu:
        data["resources"]["cpus_per_label"] = 1.0
    return Config.model_validate(data)


def plan_regimes(cfg: Config, labels: list[int], nodes: list[dict[str, float]], names) -> list[Regime]:
    """Every asked regime planned against the cluster, before anything trains (a regime that cannot be
    placed fails here, before anything is written)."""
    shared = plan_resources(len(labels), nodes, cfg.resources)
    regimes = []
    for name in names:
        rcfg = cfg if name == "shared" else matched_config(cfg, labels, nodes, shared.gpus_per_actor > 0)
        rlabels = labels if name == "shared" else list(rcfg.dataset.labels)
        plan = plan_resources(len(rlabels), nodes, rcfg.resources)
        regimes.append(Regime(name, rcfg, rlabels, plan, plan_baseline(plan)))
    return regimes


# ------------------------------------------------------------------ scores

def score_row(results: Optional[pd.DataFrame]) -> dict:
    """FID, IS, KID, mean per-class FID, class accuracy of the final evaluation in a tidy results table."""
    nan = float("nan")
    row = {"fid": nan, "is_mean": nan, "is_std": nan, "kid_mean": nan, "mean_class_fid": nan,
           "class_accuracy": nan, "n_fake": nan, "feature_space": None, "classifier_accuracy": nan,
           "real_floor_fid": nan}
    if results is None or results.empty:
        return row
    for metric in ("fid", "is_mean", "is_std", "kid_mean", "class_accuracy"):
        r = value(results, "final", metric)
        if r is not None:
            row[metric] = float(r["value"])
    fid = value(results, "final", "fid")
    if fid is not None:
        row["n_fake"] = int(fid["n_fake"])
        row["feature_space"] = fid["feature_space"]
        row["classifier_accuracy"] = float(fid.get("classifier_accuracy", nan))
    per = rows(results, "final", "fid", label=None)
    if not per.empty:
        row["mean_class_fid"] = float(per["value"].mean())
    floor = value(results, "real_floor", "fid")
    if floor is not None:
        row["real_floor_fid"] = float(floor["value"])
    return row


def _param_counts(cfg: Config, info, n_labels: int) -> dict:
    g, d = build_models(cfg.model, info.channels, info.image_size)
    cg, cd = build_models(cfg.model, info.channels, info.image_size, info.num_classes)
    return {"ensemble": (n_labels * count_parameters(g), n_labels * count_parameters(d)),
            "baseline": (count_parameters(cg), count_parameters(cd))}


def regime_rows(regime: Regime, ens_summary: pd.DataFrame, bl_summary: dict, results: dict, params: dict) -> list[dict]:
    """The regime's two rows of comparison.csv: scores, throughput and devices held."""
    ens_plan, bl_plan, budget = regime.plan, regime.baseline, regime.cfg.train.budget_s
    per_label = ens_plan.gpus_per_label if regime.kind == "GPU" else ens_plan.cpus_per_label  # a pack's share, split
    per_worker = bl_plan.resources_per_worker.get("GPU" if bl_plan.use_gpu else "CPU", 0.0)
    common = {"regime": regime.name, "budget_s": budget, "labels": len(regime.labels)}
    return [
        {**common, "method": "ensemble", **score_row(results["ensemble"]),
         "images_per_s": float(ens_summary["images_per_s"].sum()),
         "device_seconds": float(per_label * ens_summary["elapsed_s"].sum()),
         "device": regime.kind,
         "workers": f"{ens_plan.n_actors} label actors" + (f" ({ens_plan.n_labels} labels)"
                                                             if ens_plan.labels_per_actor > 1 else ""),
         "steps": int(ens_summary["steps"].sum()), "train_s": float(ens_summary["elapsed_s"].max()),
         "generator_params": params["ensemble"][0], "critic_params": params["ensemble"][1]},
        {**common, "method": "baseline", **score_row(results["baseline"]),
         "images_per_s": float(bl_summary["images_per_s"]),
         "device_seconds": float(per_worker * bl_plan.num_workers * bl_summary["elapsed_s"]),
         "device": "GPU" if bl_plan.use_gpu else "CPU",
         "workers": f"{bl_plan.num_workers} DDP workers",
         "steps": int(bl_summary["steps"]), "train_s": float(bl_summary["elapsed_s"]),
         "generator_params": params["baseline"][0], "critic_params": params["baseline"][1]},
    ]


# ------------------------------------------------------------------ outputs

def _winner(by: pd.DataFrame) -> Optional[str]:
    """The method with the lower final FID, or None when either is unscored."""
    return None if by["fid"].isna().any() else str(by["fid"].idxmin())


def _regime_section(regime: Regime, table: pd.DataFrame, scored: bool) -> list[str]:
    """One regime's heading, verdict, table and set-up."""
    cfg, ens_plan, bl_plan = regime.cfg, regime.plan, regime.baseline
    by = table[table["regime"] == regime.name].set_index("method")
    lines = [f"## {regime.title()}", ""]
    if regime.name == "matched":
        lines += [f"The paper's regime: labels {regime.labels} (the first {len(regime.labels)} configured), each "
                  f"on a {regime.kind} of its own, against the baseline with one worker per {regime.kind}, "
                  f"trained on the same labels.", ""]
    else:
        lines += ["Every configured label at once, sharing the devices, as `wcgan train` runs them; the baseline "
                  "holds the same devices in all.", ""]
    best = _winner(by) if scored else None
    if best is not None:
        other = "baseline" if best == "ensemble" else "ensemble"
        lines += [f"Lower FID: **{best}** ({fmt.num(by.loc[best, 'fid'], '.2f')} vs {fmt.num(by.loc[other, 'fid'], '.2f')}, "
                  f"{fmt.count(by.loc[best, 'n_fake'])} generated images each).", ""]
    headers = ["method", "FID ↓", "IS ↑", "KID ↓", "mean per-class FID ↓", "class accuracy ↑", "images/s",
               "device-seconds", "workers", "steps", "generator params", "n generated"]
    table_rows = []
    for m in METHODS:
        r = by.loc[m]
        table_rows.append([m, fmt.num(r["fid"], ".2f"), f"{fmt.num(r['is_mean'], '.2f')} ± {fmt.num(r['is_std'], '.2f')}",
                           fmt.num(r["kid_mean"], ".4f"), fmt.num(r["mean_class_fid"], ".2f"), fmt.num(r["class_accuracy"]),
                           fmt.num(r["images_per_s"], ".0f"), fmt.num(r["device_seconds"], ".0f"), str(r["workers"]),
                           fmt.count(r["steps"]), f"{int(r['generator_params']):,}", fmt.count(r["n_fake"])])
    root = regime.name
    lines += [fmt.markdown_table(headers, table_rows), "",
              f"- ensemble: {ens_plan.describe()}; batch {cfg.train.batch_size} per label",
              f"- baseline: {bl_plan.describe()}; batch {cfg.train.batch_size} per worker "
              f"(global {cfg.train.batch_size * bl_plan.num_workers})",
              f"- resources held in total: ensemble {fmt.resources(ens_plan.total_gpus, ens_plan.total_cpus)}, "
              f"baseline {fmt.resources(bl_plan.num_workers * bl_plan.resources_per_worker.get('GPU', 0), bl_plan.num_workers * bl_plan.resources_per_worker.get('CPU', 0))}",
              f"- runs: [`{root}/ensemble/report.md`]({root}/ensemble/report.md), "
              f"[`{root}/baseline/report.md`]({root}/baseline/report.md)", ""]
    return lines


def _verdicts(regimes: list[Regime], table: pd.DataFrame) -> list[str]:
    """Where the ensemble wins and where it does not: one line per regime."""
    out = []
    for regime in regimes:
        by = table[table["regime"] == regime.name].set_index("method")
        best = _winner(by)
        out.append([regime.title(), best or "n/a", fmt.num(by.loc["ensemble", "fid"], ".2f"),
                    fmt.num(by.loc["baseline", "fid"], ".2f"), fmt.num(by.loc["ensemble", "images_per_s"], ".0f"),
                    fmt.num(by.loc["baseline", "images_per_s"], ".0f")])
    return [fmt.markdown_table(["regime", "lower FID", "ensemble FID", "baseline FID", "ensemble images/s",
                                "baseline images/s"], out), ""]


def write_report(cmp_dir: Path, table: pd.DataFrame, cfg: Config, info, regimes: list[Regime],
                 plot: Optional[Path], scored: bool) -> Path:
    space = next((s for s in table["feature_space"] if isinstance(s, str)), None)
    acc = table["classifier_accuracy"].dropna()
    lines = [
        f"# wcgan comparison `{cmp_dir.name}`", "",
        f"Per-label parallel training (one unconditional WGAN-GP per label, {info.name}, {info.image_size} px) "
        f"against one conditional WGAN-GP (conditional batch norm generator, projection critic) trained "
        f"data-parallel with Ray Train, under the same budget of **{cfg.train.budget_s:g} s** of training "
        f"wall-clock time on the same devices, in {len(regimes)} regime(s).", "",
    ]
    if space == "classifier":
        lines += [f"> Scores are in **classifier space, not Inception space** (a small CNN trained on "
                  f"{info.name}'s training split, held-out accuracy {fmt.num(acc.iloc[0] if len(acc) else None)}); "
                  f"they compare the two methods with each other, not with published figures.", ""]
    elif space == "inception":
        lines += ["> Scores use torch-fidelity's InceptionV3 (TF1-compatible resize, antialias off).", ""]
    if not scored:
        lines += ["Not scored (metrics.enabled=false): run `wcgan evaluate --run` on each run directory, "
                  "then `wcgan compare` again with the same run.id to rebuild this table.", ""]
    lines += _verdicts(regimes, table)
    lines += ["Each regime's FIDs are over its own labels: compare the methods within a regime, not across.", ""]
    if plot is not None:
        lines += [f"![FID against wall-clock time, one panel per regime]({plot.name})", ""]
    for regime in regimes:
        lines += _regime_section(regime, table, scored)
    kind_note = " or ".join(sorted({f"{r.kind}-seconds" for r in regimes}))
    lines += [
        "## Reading the tables", "",
        "FID, IS and KID are over the regime's labels at the end of training; mean per-class FID averages the "
        "FID of each label's samples against that label's real images (biased upwards at few samples per "
        "class: compare at equal counts only). images/s counts real images the critics saw per second, over "
        f"all workers; device-seconds are {kind_note} held for training (resources x training time). "
        "Steps are generator updates: summed over the label generators for the ensemble, of the one shared "
        "generator (each on a global batch of batch size x workers) for the baseline. The baseline averages "
        "gradients over workers every update (DDP arithmetic; an explicit all-reduce because DDP does not "
        "support the gradient penalty's double backward).", "",
        f"Both methods, both regimes: model.width={cfg.model.width}, z_dim={cfg.model.z_dim}, lr={cfg.train.lr:g}, "
        f"betas={tuple(cfg.train.betas)}, n_critic={cfg.train.n_critic}, gp_weight={cfg.train.gp_weight:g}, "
        f"seed={cfg.train.seed}; {cfg.metrics.samples_per_label} samples per label scored with the same noise.", "",
        "## Files", "",
        "- `comparison.csv`: the tables above, one row per regime and method (plus device, workers, steps, parameters)",
        "- `fid_vs_time.png`: FID of both methods at every evaluation time, one panel per regime",
        "- `<regime>/ensemble/`, `<regime>/baseline/`: each run's own report, results.csv, per_label.csv and "
        "sample grid; `wcgan sample --run <this dir>/<regime>/<method> ...` samples either model", "",
    ]
    return write_text(cmp_dir / "report.md", "\n".join(lines))


# ------------------------------------------------------------------ the comparison

@dataclass
class CompareResult:
    compare_dir: Path
    table: pd.DataFrame
    report: Path
    plot: Optional[Path]
    wall_s: float


def _method_config(cfg: Config, regime_dir: Path, method: str, metrics_enabled: bool) -> Config:
    data = cfg.to_dict()
    data["run"]["storage"] = uri_of(regime_dir)  # a store URI when the comparison is on one
    data["run"]["id"] = method
    data["metrics"]["enabled"] = metrics_enabled
    return Config.model_validate(data)


def _train_regime(regime: Regime, cmp_dir: Path, address: Optional[str],
                  step: str) -> tuple[Regime, pd.DataFrame, dict]:
    """Both methods of one regime, one after the other; returns the regime with the plans training used."""
    cfg, root = regime.cfg, cmp_dir / regime.name
    # 1. the per-label ensemble: a normal run, unscored here so both are scored the same way below
    logger.info("%s %s: ensemble, %s", step, regime.title(), regime.plan.describe())
    ens = train(_method_config(cfg, root, "ensemble", False), address=address, evaluate=False)
    cfg = with_chosen_width(RunDir(ens.run_dir), cfg)  # model.width auto: the baseline gets the ensemble's
    regime = replace(regime, cfg=cfg, plan=ens.plan, baseline=plan_baseline(ens.plan))
    ens_dir = root / "ensemble"
    write_text(RunDir(ens_dir).config, dump_config(_method_config(cfg, root, "ensemble", cfg.metrics.enabled)))
    ens_summary = pd.read_csv(ens_dir / "summary.csv") if (ens_dir / "summary.csv").is_file() \
        else pd.DataFrame(ens.summaries)
    # 2. the data-parallel conditional baseline on the same CPUs / GPUs
    bl = regime.baseline
    logger.info("%s %s: baseline, %s", step, regime.title(), bl.describe())
    bl_summary = train_baseline(_method_config(cfg, root, "baseline", cfg.metrics.enabled), uri_of(root / "baseline"),
                                bl.num_workers, bl.use_gpu, bl.resources_per_worker)
    return regime, ens_summary, bl_summary


def _score_regime(regime: Regime, cmp_dir: Path, do_eval: bool, step: str) -> dict[str, Optional[pd.DataFrame]]:
    """The same scoring for both methods (or the scores already on disk, when not scoring now)."""
    root = cmp_dir / regime.name
    if not do_eval:
        return {m: read_results(RunDir(root / m).results_csv) for m in METHODS}  # scored earlier by hand, if at all
    results = {}
    for method in METHODS:
        logger.info("%s %s: scoring the %s (%s)", step, regime.title(), method, root / method)
        # storage=cmp_dir: one classifier cache (cmp_dir/_classifiers) scores every run.
        results[method] = evaluate_run(root / method, cfg=_method_config(regime.cfg, root, method, True),
                                       storage=cmp_dir)
    return results


def compare(cfg: Config, address: Optional[str] = None, evaluate: Optional[bool] = None,
            regimes: tuple[str, ...] = REGIMES) -> CompareResult:
    """Train both methods in each regime under the same budget and resources, score all the same way,
    write the comparison."""
    t0 = time.monotonic()
    info = describe(cfg.dataset)
    check_storage(cfg.run.storage)
    connect(address)
    planned = plan_regimes(cfg, list(info.labels), alive_nodes(), regimes)
    cmp_id = cfg.run.id or f"{cfg.run.name}-compare-{time.strftime('%Y%m%d-%H%M%S')}"
    cmp_dir = local_path(join(cfg.run.storage, cmp_id)).absolute()  # an object store's: its local mirror
    do_eval = cfg.metrics.enabled if evaluate is None else evaluate
    logger.info("comparison %s: %s, budget %gs each%s", cmp_dir, info.name, cfg.train.budget_s, "".join(
        f"\n  {r.title()}\n    ensemble: {r.plan.describe()}\n    baseline: {r.baseline.describe()}" for r in planned))
    cmp_dir.mkdir(parents=True, exist_ok=True)
    write_text(cmp_dir / "config.yaml", dump_config(cfg))

    done, table_rows, panels = [], [], {}
    for i, regime in enumerate(planned, 1):
        step = f"[regime {i}/{len(planned)}]"
        regime, ens_summary, bl_summary = _train_regime(regime, cmp_dir, address, step)
        results = _score_regime(regime, cmp_dir, do_eval, step)
        params = _param_counts(regime.cfg, info, len(regime.labels))
        table_rows += regime_rows(regime, ens_summary, bl_summary, results, params)
        panels[regime.title()] = results
        done.append(regime)

    table = pd.DataFrame(table_rows, columns=COMPARISON_COLUMNS + EXTRA_COLUMNS)
    write_csv(table, cmp_dir / "comparison.csv")
    plot = plot_fid_vs_time(panels, cmp_dir / "fid_vs_time.png")
    scored = all(r is not None for results in panels.values() for r in results.values())
    report = write_report(cmp_dir, table, cfg, info, done, plot, scored)
    write_text(cmp_dir / "compare.json", json.dumps({
        "budget_s": cfg.train.budget_s, "wall_s": round(time.monotonic() - t0, 2),
        "regimes": {r.name: {"labels": r.labels, "ensemble_plan": r.plan.describe(),
                             "baseline_plan": r.baseline.describe(), "baseline_workers": r.baseline.num_workers,
                             "baseline_resources_per_worker": r.baseline.resources_per_worker} for r in done}},
        indent=2))
    logger.info("wrote %s, %s", cmp_dir / "comparison.csv", report)
    return CompareResult(cmp_dir, table, report, plot, time.monotonic() - t0)


# ------------------------------------------------------------------ CLI

def cmd_compare(args) -> int:
    cfg = config_from_args(args)
    regimes = REGIMES if args.regime == "both" else (args.regime,)
    result = compare(cfg, address=args.address, evaluate=False if args.no_eval else None, regimes=regimes)
    cols = ["regime", "method", "labels", "fid", "is_mean", "kid_mean", "mean_class_fid", "class_accuracy",
            "images_per_s", "device_seconds"]
    print(result.table[cols].to_string(index=False))
    print(f"done in {result.wall_s:.0f}s: {result.report}")
    return 0


__all__ = ["compare", "CompareResult", "COMPARISON_COLUMNS", "REGIMES", "matched_config", "plan_regimes"]
