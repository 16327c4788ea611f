"""model.width: auto: the widest width whose projected generator steps reach the minimum for the
resolution, chosen once per run by the label actors' timings and recorded where resume, sampling
and scoring rebuild the network from."""

from __future__ import annotations

import asyncio

import pytest
import yaml

from conftest import small_config  # noqa: E402
from core.config import dump_config, load_config
from core.errors import ConfigError
from core.rundir import RunDir, load_checkpoint, write_text
from metrics.collector import Collector
from orchestrator.cli import main
from orchestrator.preflight import budget_projection, check_run_disk, estimate_disk, free_bytes
from orchestrator.run import train, with_chosen_width
from workers.models import parameter_counts
from workers.preflight import WIDTHS, candidate_widths, choose_width, largest_model, min_generator_steps
from workers.sampler import load_sampler

# Seconds per generator step by width, as an actor might measure them: the cost grows with the width.
MEASURED = {8: 0.01, 16: 0.02, 24: 0.04, 32: 0.06, 48: 0.1, 64: 0.2, 96: 0.4, 128: 0.8}


def _timer(measured: dict[int, float]):
    probed: list[int] = []

    def seconds_per_step(width: int) -> float:
        probed.append(width)
        return measured[width]

    return seconds_per_step, probed


# ------------------------------------------------------------------ the choice


def test_the_widest_width_whose_projection_reaches_the_minimum_is_chosen():
    timer, probed = _timer(MEASURED)
    # 20 s buys 200 steps at 0.1 s per step: width 48 just reaches the minimum, 64 does not.
    assert choose_width(WIDTHS, timer, budget_s=20, need=200) == (48, 200)
    assert len(probed) == len(set(probed)) <= 4 < len(WIDTHS)  # bisected, each width timed once
    assert 128 not in probed  # the widest (dearest) width is never timed when a narrower one fails

    # An actor training a pack of 2 labels in turn gets half the steps each: a narrower width.
    assert choose_width(WIDTHS, _timer(MEASURED)[0], budget_s=20, need=200, labels=2) == (24, 250)
    assert choose_width(WIDTHS, _timer(MEASURED)[0], budget_s=1000, need=200) == (128, 1250)


def test_the_narrowest_width_is_chosen_when_none_reaches_the_minimum():
    timer, probed = _timer(MEASURED)
    assert choose_width(WIDTHS, timer, budget_s=1, need=200) == (8, 100)
    assert probed[-1] == 8 and len(probed) <= 4
    # A width that failed to time (out of device memory) projects no steps.
    assert choose_width([8, 16], _timer({8: float("inf"), 16: float("inf")})[0], budget_s=1, need=1) == (8, 0)


def test_the_ladder_stops_at_model_max_parameters_and_at_the_disk_cap():
    model = load_config(None, ["model.width=auto"]).model
    assert candidate_widths(model, 3, 64) == list(WIDTHS)
    assert candidate_widths(model, 3, 64, max_width=40) == [8, 16, 24, 32]
    assert candidate_widths(model, 3, 64, max_width=4) == [8]  # the narrowest at least
    cap = max(parameter_counts(model.model_copy(update={"width": 32}), 3, 64))
    capped = load_config(None, ["model.width=auto", f"model.max_parameters={cap}"]).model
    assert candidate_widths(capped, 3, 64) == [8, 16, 24, 32]
    assert largest_model(capped, 3, 64).width == 32  # what the driver's size and disk checks go by
    assert largest_model(load_config(None, ["model.width=16"]).model, 3, 64).width == 16
    with pytest.raises(ConfigError, match=r"model\.max_parameters"):
        candidate_widths(load_config(None, ["model.width=auto", "model.max_parameters=10"]).model, 3, 64)


def test_the_disk_check_sizes_an_auto_run_at_the_widest_width_that_fits(tmp_path):
    cfg = load_config("experiments/digits.yaml", [f"run.storage={tmp_path}", "model.width=auto"])
    assert check_run_disk(cfg, 1, 8, 10).width == 128  # a few MiB per label: every width fits
    # So many labels that width 32 fills three quarters of the free space: 48 (about 1.8x) no longer fits.
    per_label_at_32 = estimate_disk(cfg, 1, 8, 1000, width=32).total_bytes / 1000
    n = int(0.75 * free_bytes(tmp_path) / per_label_at_32)
    assert check_run_disk(cfg, 1, 8, n).width == 32
    assert estimate_disk(cfg, 1, 8, n, width=48).total_bytes > free_bytes(tmp_path)
    assert check_run_disk(load_config("experiments/digits.yaml", [f"run.storage={tmp_path}"]), 1, 8, 10).width is None


# ------------------------------------------------------------------ the config


def test_model_width_is_auto_or_a_number_of_channels():
    assert load_config(None, ["model.width=auto"]).model.width == "auto"
    assert load_config(None, ["model.width=48"]).model.width == 48
    for bad in ("wide", "2", "2000", "true", "16.5"):
        with pytest.raises(ConfigError, match=r"model\.width: must be 'auto' or a whole number of channels"):
            load_config(None, [f"model.width={bad}"])
    for name in ("folder", "imagenet1k"):  # the experiments whose resolution varies default to auto
        assert yaml.safe_load(open(f"experiments/{name}.yaml"))["model"]["width"] == "auto"


# ------------------------------------------------------------------ one width per run


def test_the_run_takes_the_narrowest_pick_and_records_it_before_answering(tmp_path):
    run = RunDir(tmp_path / "run")
    write_text(run.config, dump_config(load_config(None, ["model.width=auto", "dataset.labels=[0,1,2,3]"])))
    collector = Collector(str(run.path), [0, 1, 2, 3])

    async def agree():
        first = asyncio.ensure_future(collector.agree_width([0, 1], 48))  # a pack of two labels
        await asyncio.sleep(0.05)
        assert not first.done()  # labels 2 and 3 have not said theirs
        collector.report_failed(3, "bad data")  # a label that failed for good is not waited for
        second = await collector.agree_width([2], 24)
        return await asyncio.wait_for(first, 1.0), second

    assert asyncio.run(agree()) == (24, 24)
    assert load_config(run.config).model.width == 24  # before anyone heard it
    again = Collector(str(run.path), [0, 1, 2, 3])  # restarted: it answers at once, from config.yaml
    assert asyncio.run(asyncio.wait_for(again.agree_width([0, 1], 128), 1.0)) == 24


def test_a_resumed_auto_run_takes_the_width_its_run_chose(tmp_path):
    run = RunDir(tmp_path / "run")
    cfg = load_config(None, ["model.width=auto"])
    assert with_chosen_width(run, cfg) is cfg  # nothing recorded yet: the actors time
    write_text(run.config, dump_config(cfg))
    assert with_chosen_width(run, cfg).model.width == "auto"  # recorded, but not chosen yet
    write_text(run.config, dump_config(load_config(None, ["model.width=24"])))
    assert with_chosen_width(run, cfg).model.width == 24
    assert with_chosen_width(run, load_config(None, ["model.width=16"])).model.width == 16  # a number is the user's


def test_the_projection_line_names_the_chosen_width_and_the_minimum():
    cfg = load_config(None, ["model.width=auto", "train.budget_s=30"])
    assert min_generator_steps(8) == 200
    plenty = {k: {"state": "loaded", "projected_steps": 300 + k, "step_s": 0.1, "width": 32} for k in range(3)}
    message, too_few = budget_projection(plenty, cfg, 8)
    assert not too_few
    assert message == ("pre-flight: model.width auto chose 32; 30s buys about 300/301/302 generator steps per label "
                       "(min/median/max over 3 labels), at least the 200 that 8px images need")
    few = {0: {"state": "loaded", "projected_steps": 50, "step_s": 0.6, "width": 8}}
    message, too_few = budget_projection(few, cfg, 8)
    assert too_few and "model.width auto chose 8" in message and "fewer than the 200" in message
    assert "Give train.budget_s=120 or more, or put fewer labels on each device" in message
    assert "Lower model.width" not in message  # auto already took the narrowest that was needed


# ------------------------------------------------------------------ a real run (local Ray)


def test_an_auto_run_trains_at_one_recorded_width_that_sampling_and_resume_reuse(ray_local, tmp_path, capsys):
    storage = tmp_path / "runs"
    result = train(small_config(storage, "run.id=auto", "model.width=auto", "train.budget_s=3"))
    run = RunDir(result.run_dir)
    width = load_config(run.config).model.width
    assert width in WIDTHS  # config.yaml holds the number, not auto
    for label in (0, 1, 2):
        ckpt = load_checkpoint(run.checkpoints(label)[-1][1])
        snap = load_checkpoint(run.snapshots(label)[-1][1])
        assert ckpt["model"]["width"] == snap["model"]["width"] == width
    sampler = load_sampler(result.run_dir)
    assert sampler.sample([0, 1, 2], seed=0).shape == (3, 1, 8, 8)
    out = tmp_path / "s.png"
    assert main(["sample", "--run", str(result.run_dir), "--label", "0,2", "--n", "2", "--out", str(out)]) == 0
    assert out.stat().st_size > 0

    # Resumed with auto (and a longer budget): the same network, continued from its checkpoints.
    again = train(small_config(storage, "run.id=auto", "model.width=auto", "train.budget_s=5"))
    assert all(s["resumed_from_step"] is not None for s in again.summaries)
    assert load_config(run.config).model.width == width
    assert load_checkpoint(run.checkpoints(0)[-1][1])["model"]["width"] == width
