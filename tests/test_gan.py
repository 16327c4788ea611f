"""Unit tests of what runs inside an actor: models, the WGAN-GP step, the budgeted loop, history (no Ray)."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
from torch import nn

from conftest import small_config, two_tone_images
from core.rundir import History, load_checkpoint, save_checkpoint
from workers.gan import WGANGP, StepStats, gradient_penalty
from workers.loop import BudgetedLoop
from workers.models import ConditionalGenerator, Critic, Generator, ProjectionCritic, count_parameters

CPU = torch.device("cpu")


# ------------------------------------------------------------------ models

def test_conditional_models_match_the_per_label_architecture():
    for size in (8, 28, 32):
        g = ConditionalGenerator(16, 8, 3, size, num_classes=10)
        d = ProjectionCritic(8, 3, size, num_classes=10)
        z, y = torch.randn(4, 16), torch.tensor([0, 3, 9, 3])
        x = g(z, y)
        assert x.shape == (4, 3, size, size) and x.abs().max() <= 1
        assert d(x, y).shape == (4,)
        # Same layers as the per-label pair; only the label embeddings are added.
        extra_g = count_parameters(g) - count_parameters(Generator(16, 8, 3, size))
        extra_d = count_parameters(d) - count_parameters(Critic(8, 3, size))
        assert 0 < extra_g <= 2 * 10 * sum(m.num_features for m in g.modules()
                                           if isinstance(m, torch.nn.modules.batchnorm._BatchNorm))
        assert extra_d == 10 * d.embed.embedding_dim


def test_generator_routes_labels_through_its_embeddings():
    torch.manual_seed(0)
    g = ConditionalGenerator(16, 8, 1, 8, num_classes=3).eval()
    with torch.no_grad():
        # Make the output a function of the label only: the last norm's gamma is 0 and its beta is
        # 0 / 1.5 / 3 per class; the output conv averages its 3x3 input, so inner pixels are tanh(beta_y).
        g.norms[-1].gamma.weight.zero_()
        g.norms[-1].beta.weight.copy_(torch.tensor([[0.0], [1.5], [3.0]]).expand_as(g.norms[-1].beta.weight))
        conv = g.to_image[0]
        conv.weight.fill_(1.0 / conv.weight[0].numel())
        conv.bias.zero_()
        z = torch.randn(6, 16)
        y = torch.tensor([2, 0, 1, 2, 0, 1])
        out = g(z, y)[:, 0, 1:-1, 1:-1]  # inner pixels: no zero padding in their window
    expected = torch.tanh(torch.tensor([0.0, 1.5, 3.0]))[y][:, None, None].expand_as(out)
    assert torch.allclose(out, expected, atol=1e-5)


def test_projection_critic_adds_the_label_projection_of_pooled_features():
    torch.manual_seed(0)
    d = ProjectionCritic(8, 1, 8, num_classes=4)
    nn.init.normal_(d.embed.weight)  # a visible projection term
    x = torch.randn(5, 1, 8, 8)
    y = torch.tensor([0, 3, 1, 3, 2])
    with torch.no_grad():
        h = d.features(x)
        unconditional = d.head(h.flatten(1)).squeeze(1)
        projection = (d.embed.weight[y] * h.sum(dim=(2, 3))).sum(dim=1)
        assert torch.allclose(d(x, y), unconditional + projection, atol=1e-5)
        assert projection.abs().min() > 1e-3  # the label really changes the score


# ------------------------------------------------------------------ the WGAN-GP step

def test_gradient_penalty_of_a_linear_critic_is_its_closed_form():
    # D(x) = <w, x>: grad_x D = w everywhere, so the penalty is (||w|| - 1)^2 at any interpolate.
    torch.manual_seed(0)
    w = torch.randn(1, 3, 4, 4)
    critic = lambda x: (x * w).flatten(1).sum(1)  # noqa: E731
    real, fake = torch.randn(6, 3, 4, 4), torch.randn(6, 3, 4, 4)
    gp = gradient_penalty(critic, real, fake, torch.Generator().manual_seed(1))
    assert gp.item() == pytest.approx((w.norm().item() - 1.0) ** 2, rel=1e-5)
    unit = w / w.norm()
    assert gradient_penalty(lambda x: (x * unit).flatten(1).sum(1), real, fake,
                            torch.Generator()).item() == pytest.approx(0.0, abs=1e-10)


def test_gradient_penalty_is_differentiable_in_the_critic():
    w = torch.full((1, 1, 2, 2), 2.0, requires_grad=True)  # ||w|| = 4
    gp = gradient_penalty(lambda x: (x * w).flatten(1).sum(1), torch.randn(3, 1, 2, 2), torch.randn(3, 1, 2, 2),
                          torch.Generator())
    gp.backward()
    # d/dw (||w|| - 1)^2 = 2 (||w|| - 1) w / ||w||
    assert torch.allclose(w.grad, torch.full_like(w, 2 * (4 - 1) * 2 / 4), atol=1e-5)


def _pair(labels=None, num_classes=None, **overrides):
    cfg = small_config("/tmp/unused", *[f"train.{k}={v}" for k, v in overrides.items()])
    images = two_tone_images(32, size=8)
    if labels is None:
        images = images[:16]
    return WGANGP.build(cfg.model, cfg.train, images, CPU, labels=labels, num_classes=num_classes, seed=0)


def test_the_critic_is_frozen_during_the_generator_update():
    torch.manual_seed(0)
    pair = _pair(n_critic=1)
    seen = {}

    def record(module, args, output):
        seen["critic_grad"] = [p.requires_grad for p in module.parameters()]
        seen["output_grad"] = output.requires_grad

    critic_before = [p.detach().clone() for p in pair.critic.parameters()]
    generator_before = [p.detach().clone() for p in pair.generator.parameters()]
    real_opt_step = pair.opt_d.step
    pair.opt_d.step = lambda *a, **k: None  # freeze the critic's own update, to isolate the generator's
    handle = pair.critic.register_forward_hook(record)
    pair.step()
    handle.remove()
    pair.opt_d.step = real_opt_step
    # The last critic call is the generator update's: the critic takes no gradient, its output does.
    assert seen["critic_grad"] and not any(seen["critic_grad"]) and seen["output_grad"]
    assert all(torch.equal(a, b) for a, b in zip(critic_before, pair.critic.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(generator_before, pair.generator.parameters()))
    # ...and it is trainable again for the next critic update.
    pair.step()
    assert any(not torch.equal(a, b) for a, b in zip(critic_before, pair.critic.parameters()))


def test_conditional_pair_learns_each_labels_images():
    """The baseline's pair: label 0 is all dark, label 1 all bright; after training, G(z, y) follows y."""
    torch.manual_seed(0)
    torch.set_num_threads(1)
    images, labels = two_tone_images(64, size=8), torch.tensor([0] * 32 + [1] * 32)
    cfg = small_config("/tmp/unused", "train.lr=1e-3", "train.n_critic=2")
    pair = WGANGP.build(cfg.model, cfg.train, images, CPU, labels=labels, num_classes=2, seed=0)
    for _ in range(150):
        stats = pair.step()
    assert pair.generator_steps == 150
    assert all(math.isfinite(v) for v in stats.floats().values())
    pair.generator.eval()
    with torch.no_grad():
        z = torch.randn(64, pair.z_dim)
        dark = pair.generator(z, torch.zeros(64, dtype=torch.long)).mean().item()
        bright = pair.generator(z, torch.ones(64, dtype=torch.long)).mean().item()
    assert bright - dark > 0.8, (dark, bright)


def test_checkpoint_state_round_trips(tmp_path):
    a, b = _pair(), _pair()
    a.step()
    save_checkpoint({"state": a.state_dict()}, tmp_path / "ckpt.pt")
    b.load_state_dict(load_checkpoint(tmp_path / "ckpt.pt")["state"])
    assert b.generator_steps == 1
    for p, q in zip(a.generator.parameters(), b.generator.parameters()):
        assert torch.equal(p, q)
    # Same weights, optimiser state and RNG stream: the same next step.
    assert a.step().floats() == b.step().floats()


# ------------------------------------------------------------------ the budgeted loop

class CountingPair:
    """A pair whose step costs nothing: the loop's rules, not training, are under test."""

    images_per_step = 10

    def __init__(self):
        self.generator_steps = 0

    def step(self) -> StepStats:
        self.generator_steps += 1
        z = torch.zeros(())
        return StepStats(z, z, z, z)


def test_loop_stops_at_max_steps_and_checkpoints_once_at_the_end():
    pair, logs, ckpts = CountingPair(), [], []
    result = BudgetedLoop(pair, budget_s=3600, max_steps=25, log_every_s=3600, checkpoint_every_s=3600).run(
        logs.append, lambda elapsed, final, mark_s: ckpts.append(final))
    assert pair.generator_steps == result.steps == 25 and result.start_step == 0
    assert ckpts == [True] and [r["step"] for r in logs] == [25]
    assert result.images_per_s > 0 and logs[-1]["images_per_s"] == result.images_per_s


def test_loop_stopping_rule_is_half_a_step():
    loop = BudgetedLoop(CountingPair(), budget_s=10.0)
    assert not loop.spent(elapsed_s=9.0, step_s=1.9)   # the next step ends 0.9 s over: less than half of it
    assert loop.spent(elapsed_s=9.0, step_s=2.1)       # 1.1 s over: more than half a step
    assert loop.spent(elapsed_s=10.0, step_s=0.0)


def test_loop_resumed_with_its_budget_spent_trains_no_step():
    pair, ckpts = CountingPair(), []
    result = BudgetedLoop(pair, budget_s=5.0, elapsed0=5.0).run(lambda row: None,
                                                                lambda elapsed, final, mark_s: ckpts.append((elapsed, final)))
    assert pair.generator_steps == 0 and result.trained_s == 0 and result.last is None
    assert ckpts == [(5.0, True)]


def test_loop_takes_the_groups_decisions():
    """Data-parallel workers act on the agreed decisions (rank 0's), not on their own clocks."""
    pair, logs, ckpts = CountingPair(), [], []

    def agree(d):
        return d._replace(stop=pair.generator_steps >= 7, log=pair.generator_steps % 3 == 0,
                          checkpoint=pair.generator_steps == 5)

    BudgetedLoop(pair, budget_s=3600, agree=agree).run(logs.append, lambda e, final, mark_s: ckpts.append((pair.generator_steps, final)))
    assert [r["step"] for r in logs] == [3, 6, 7]   # the periodic rows, then the final one
    assert ckpts == [(5, False), (7, True)]


# ------------------------------------------------------------------ history.csv

def test_history_drops_rows_past_the_resumed_checkpoint(tmp_path):
    path = tmp_path / "labels" / "0" / "history.csv"
    h = History(path)
    for step in (10, 20, 30, 40):
        h.append({"step": step, "elapsed_s": step / 10, "critic_loss": 0.5, "restarts": 0, "ignored": "x"})
    resumed = History(path, keep_up_to=20)   # the actor died after step 40; the last checkpoint is at 20
    resumed.append({"step": 25, "elapsed_s": 2.5, "restarts": 1})
    rows = pd.read_csv(path)
    assert list(rows["step"]) == [10, 20, 25] and list(rows["restarts"]) == [0, 0, 1]
    assert "ignored" not in rows.columns
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".tmp-")]  # rewritten atomically


def test_the_generators_moving_average_is_kept_saved_and_sampled(tmp_path):
    """model.ema: an average of the generator's weights (with a warm-up), resumed from checkpoints,
    written into snapshots and preferred by the sampler."""
    from conftest import small_config
    from core.rundir import RunDir, load_checkpoint
    from workers.checkpoint import Checkpointer, Resume, restore
    from workers.data import load_label
    from workers.gan import WGANGP
    from workers.sampler import Sampler

    cfg = small_config(tmp_path, "model.ema=true")
    images = load_label(cfg.dataset, 1)
    pair = WGANGP.build(cfg.model, cfg.train, images, torch.device("cpu"), seed=1)
    before = {k: v.clone() for k, v in pair.generator.state_dict().items()}
    pair.step()  # step 1: decay min(0.999, 1/10) = 0.1 -> ema = 0.1 * old + 0.9 * new
    w = "net.0.weight" if "net.0.weight" in before else next(k for k, v in before.items() if v.is_floating_point())
    new, ema = pair.generator.state_dict()[w], pair.generator_ema.state_dict()[w]
    assert torch.allclose(ema, 0.1 * before[w] + 0.9 * new, atol=1e-6) and not torch.equal(ema, new)
    for _ in range(3):
        pair.step()
    run = RunDir(tmp_path / "run")
    ckpt = Checkpointer(run, 1, pair, cfg, Resume(), 0, [1], pair.images_per_step)
    ckpt.save(1.0)
    snap = load_checkpoint(ckpt.last_snapshot)["state"]
    assert torch.equal(snap["generator_ema"][w], pair.generator_ema.state_dict()[w])
    again = WGANGP.build(cfg.model, cfg.train, images, torch.device("cpu"), seed=99)
    restore(run, 1, again)
    assert torch.equal(again.generator_ema.state_dict()[w], pair.generator_ema.state_dict()[w])
    z = torch.randn(4, cfg.model.z_dim)
    with torch.no_grad():
        expected = pair.generator_ema.eval()(z)
    averaged = Sampler.from_checkpoint(ckpt.last_snapshot)
    assert torch.allclose(averaged._generate(1, z), expected, atol=1e-6)
    raw = Sampler.from_checkpoint(ckpt.last_snapshot, ema=False)
    assert not torch.allclose(raw._generate(1, z), expected, atol=1e-6)
