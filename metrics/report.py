"""report.md: the first thing a person opens in a run directory.

Built only from files in the run directory (results.csv, per_label.csv, metrics.json, summary.csv,
config.yaml, samples/grid.png), so ``wcgan report --run DIR`` re-renders it anywhere.
Classifier-space scores are labelled as such, with the classifier's held-out accuracy beside each;
FID always comes with its sample counts.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import pandas as pd

from core.config import load_config
from core import fmt
from core.rundir import RunDir, write_text
from metrics.plots import make_plots, space_label
from metrics.results import read_results, read_table, value

PER_LABEL_ROWS = 50


def _score_name(metric: str, space: str, acc) -> str:
    """'FID (classifier space, classifier acc 0.992)' / 'FID (Inception)'."""
    return f"{metric} ({space_label(space, acc)})"


def _headline(results: pd.DataFrame, meta: dict) -> list[str]:
    fid = value(results, "final", "fid")
    if fid is None:
        return ["No final evaluation in results.csv."]
    space, acc = fid["feature_space"], fid["classifier_accuracy"]
    t = fid["eval_time_s"]
    lines = [f"## Final ensemble (after {fmt.num(t, '.0f')} s of training per label)", ""]
    rows = []
    floor = value(results, "real_floor", "fid")
    rows.append([
        _score_name("FID", space, acc) + " ↓", f"**{fmt.num(fid['value'], '.2f')}**",
        f"{fmt.count(fid['n_fake'])} generated vs {fmt.count(fid['n_real'])} real (train split)",
        "n/a" if floor is None else
        f"{fmt.num(floor['value'], '.2f')} ({fmt.count(floor['n_fake'])} held-out vs {fmt.count(floor['n_real'])} train)",
    ])
    km, ks = value(results, "final", "kid_mean"), value(results, "final", "kid_std")
    if km is not None:
        fkm, fks = value(results, "real_floor", "kid_mean"), value(results, "real_floor", "kid_std")
        sub = meta.get("kid_subset_size")
        size = min(x for x in (sub, km["n_fake"], km["n_real"]) if not fmt.isnan(x)) if sub else None
        rows.append([
            _score_name("KID", space, acc) + " ↓", f"{fmt.num(km['value'], '.4f')} ± {fmt.num(ks['value'] if ks is not None else None, '.4f')}",
            f"{meta.get('kid_subsets', '?')} subsets of {fmt.count(size)} from {fmt.count(km['n_fake'])} generated / {fmt.count(km['n_real'])} real",
            "n/a" if fkm is None else f"{fmt.num(fkm['value'], '.4f')} ± {fmt.num(fks['value'] if fks is not None else None, '.4f')}",
        ])
    im, isd = value(results, "final", "is_mean"), value(results, "final", "is_std")
    if im is not None:
        rim, risd = value(results, "real_floor", "is_mean"), value(results, "real_floor", "is_std")
        rows.append([
            _score_name("IS", space, acc) + " ↑",
            f"{fmt.num(im['value'], '.2f')} ± {fmt.num(isd['value'] if isd is not None else None, '.2f')}",
            f"{fmt.count(im['n_fake'])} generated, mean ± std over {meta.get('is_splits', '?')} splits (seed {meta.get('seed', '?')})",
            "n/a" if rim is None else
            f"{fmt.num(rim['value'], '.2f')} ± {fmt.num(risd['value'] if risd is not None else None, '.2f')} "
            f"(held-out real, {fmt.count(rim['n_fake'])})",
        ])
    ca = value(results, "final", "class_accuracy")
    if ca is not None:
        rca = value(results, "real_floor", "class_accuracy")
        rows.append([
            f"class accuracy (classifier acc {fmt.num(ca['classifier_accuracy'])}) ↑", f"{fmt.num(ca['value'])}",
            f"{fmt.count(ca['n_fake'])} generated: share of generator k's samples classified as k",
            "n/a" if rca is None else f"{fmt.num(rca['value'])} (held-out real, {fmt.count(rca['n_fake'])})",
        ])
    lines.append(fmt.markdown_table(["score", "value", "samples", "real floor: train vs held-out split"], rows))
    return lines


def _over_time(results: pd.DataFrame) -> list[str]:
    ev = results[results["eval"].isin(["checkpoint", "final"]) & (results["label"] == "all")]
    times = sorted(ev["eval_time_s"].dropna().unique())
    if len(times) == 0:
        return []
    first = ev[ev["metric"] == "fid"].iloc[0]
    space, acc = first["feature_space"], first["classifier_accuracy"]
    ca = ev[ev["metric"] == "class_accuracy"]["classifier_accuracy"]
    clf_acc = ca.iloc[0] if len(ca) else float("nan")
    rows = []
    for t in times:
        at = ev[ev["eval_time_s"] == t].drop_duplicates("metric", keep="last").set_index("metric")
        def v(metric, spec=".2f"):
            return fmt.num(at["value"].get(metric), spec) if metric in at.index else "n/a"
        name = at["eval"].iloc[-1]
        n = f"{fmt.count(at['n_fake'].get('fid'))} / {fmt.count(at['n_real'].get('fid'))}" if "fid" in at.index else "?"
        rows.append([f"{t:.0f}" + (" (final)" if name == "final" else ""), v("fid"), n,
                     f"{v('is_mean')} ± {v('is_std')}", v("kid_mean", ".4f"), v("class_accuracy", ".3f")])
    return [
        fmt.markdown_table(["training time (s)", _score_name("FID", space, acc), "n generated / real",
                _score_name("IS", space, acc), _score_name("KID", space, acc),
                f"class accuracy (classifier acc {fmt.num(clf_acc)})"],
               rows)]


def _per_label(per_label: pd.DataFrame, summary: Optional[pd.DataFrame]) -> list[str]:
    if per_label is None or per_label.empty:
        return []
    df = per_label.copy()
    if summary is not None and "label" in summary:
        keep = [c for c in ("label", "steps", "images_per_s", "wasserstein", "restarts") if c in summary]
        df = df.merge(summary[keep], on="label", how="left")
    df = df.sort_values("label")
    space, acc = df["feature_space"].iloc[0], df["classifier_accuracy"].iloc[0]
    headers = ["label", "name", _score_name("FID", space, acc), "n gen / real", "floor FID (n held-out / train)",
               f"class accuracy (classifier acc {fmt.num(acc)})", "classifier on held-out real of k"]
    extra = [c for c in ("steps", "images_per_s", "wasserstein", "restarts") if c in df]
    headers += [c.replace("_", " ") for c in extra]
    rows = []
    for _, r in df.head(PER_LABEL_ROWS).iterrows():
        row = [str(r["label"]), str(r.get("label_name", r["label"])), fmt.num(r["fid"], ".2f"),
               f"{fmt.count(r['n_fake'])} / {fmt.count(r['n_real'])}",
               f"{fmt.num(r.get('fid_floor'), '.2f')} ({fmt.count(r.get('n_heldout'))} / {fmt.count(r['n_real'])})",
               fmt.num(r.get("class_accuracy")), fmt.num(r.get("heldout_class_accuracy"))]
        for c in extra:
            row.append(fmt.num(r[c], ".0f") if c in ("steps", "images_per_s", "restarts") else fmt.num(r[c], ".3f"))
        rows.append(row)
    out = [fmt.markdown_table(headers, rows)]
    if len(df) > PER_LABEL_ROWS:
        out.append(f"\n(first {PER_LABEL_ROWS} of {len(df)} labels; all of them are in `per_label.csv`)")
    return out


def _space_banner(meta: dict, results: Optional[pd.DataFrame]) -> list[str]:
    space = meta.get("feature_space")
    if space is None and results is not None and not results.empty:
        space = results["feature_space"].iloc[0]
    clf = meta.get("classifier") or {}
    if space == "classifier":
        return [
            f"> **Scores are in classifier space, not Inception space.** FID, KID and IS here use the "
            f"{clf.get('feature_dim', '?')}-d features and the logits of a small CNN trained on this data set's "
            f"training split (held-out accuracy **{fmt.num(clf.get('accuracy'))}** on {clf.get('n_test', '?')} "
            f"images, {clf.get('num_classes', '?')} classes). They compare runs scored by the same classifier; "
            f"they are not comparable with published Inception-based FID or IS figures. "
            f"({meta.get('feature_space_reason', '')})",
        ]
    if space == "inception":
        lines = ["> Scores use torch-fidelity's InceptionV3 (pool3 2048-d features for FID/KID, logits for IS; "
                 "TF1-compatible resize, antialias off), as in the literature. "
                 f"({meta.get('feature_space_reason', '')})"]
        if clf:
            lines.append(">")
            lines.append(f"> Class accuracy uses a small CNN trained on the data set "
                         f"(held-out accuracy {fmt.num(clf.get('accuracy'))}).")
        return lines
    return []


def render_report(run_dir: str | os.PathLike) -> Path:
    """(Re)writes run_dir/report.md and the plots from the files in the run directory; returns the report path."""
    run = RunDir(run_dir).sync()
    results = read_results(run.results_csv)
    per_label = read_table(run.per_label_csv)
    summary = read_table(run.summary_csv)
    meta = {}
    if run.metrics_json.is_file():
        try:
            meta = json.loads(run.metrics_json.read_text())
        except json.JSONDecodeError:
            meta = {}
    cfg = None
    if run.config.is_file():
        try:
            cfg = load_config(run.config)
        except Exception:
            cfg = None
    plots = make_plots(run.path)

    lines = [f"# wcgan run `{run.path.name}`", ""]
    if cfg is not None:
        labels = meta.get("labels") or cfg.dataset.labels
        n_labels = len(labels) if isinstance(labels, list) else "all"
        protocol = meta.get("protocol", "quick")
        if protocol == "standard":
            scored = (f"**standard** protocol: {fmt.count(meta.get('samples_total'))} generated images, labels "
                      f"drawn in proportion to the training class frequencies")
        else:
            scored = (f"**quick** protocol: {meta.get('samples_per_label', cfg.metrics.samples_per_label)} samples "
                      f"per label (not comparable with published figures; `--set metrics.protocol=standard`)")
        lines.append(f"Data set **{cfg.dataset.name}** ({n_labels} labels, {meta.get('image_size', cfg.dataset.image_size or 'native')} px), "
                     f"one WGAN-GP generator per label, training budget {cfg.train.budget_s:g} s per label; {scored}.")
        if meta.get("extractor"):
            lines.append(f"Features: {meta['extractor']}.")
        lines.append("")
    lines += _space_banner(meta, results)
    lines.append("")
    if results is None or results.empty:
        lines += [f"Not scored yet: run `wcgan evaluate --run {run.path}`.", ""]
    else:
        lines += _headline(results, meta) + [""]
        lines += ["FID depends on the number of samples (it is biased upwards for small n): compare figures only "
                  "at equal counts, and read them against the real floor, the FID between the training and "
                  "held-out splits of the real data in the same feature space.", ""]
        over = _over_time(results)
        if over:
            lines += ["## Over training time", ""]
            if "fid_over_time" in plots:
                lines += ["![FID and IS against training time](plots/fid_over_time.png)", ""]
            lines += over + [""]
    pl = _per_label(per_label, summary)
    if pl:
        lines += ["## Per label", "",
                  "Per-class FID compares generator k with the real training images of label k; with a few hundred "
                  "images per class it is strongly biased upwards, so read it against that label's floor and its n.", ""]
        if "per_class_fid" in plots:
            lines += ["![per-class FID and class accuracy](plots/per_class_fid.png)", ""]
        lines += pl + [""]
    elif summary is not None and not summary.empty:
        lines += ["## Training summary", "",
                  fmt.markdown_table(list(summary.columns), [[str(v) for v in r] for r in summary.itertuples(index=False)]), ""]
    if run.grid.is_file():
        lines += ["## Samples", "", "One row per label (generator k in row k).", "",
                  "![samples, one row per label](samples/grid.png)", ""]
    lines += ["## Files", "",
              "- `results.csv`: one row per evaluation and metric (eval, eval_time_s, metric, label, value, "
              "n_fake, n_real, feature_space, classifier_accuracy); `real_floor` rows use the held-out split "
              "in place of generated images, so their n_fake is the held-out count",
              "- `per_label.csv`: per-class FID, its floor and class accuracy of the final ensemble",
              "- `summary.csv`: training summary per label; `labels/<k>/history.csv`: training curves",
              "- `metrics.json`: how the scores were computed (feature space, classifier, seeds, sample counts)",
              ""]
    return write_text(run.report, "\n".join(lines))
