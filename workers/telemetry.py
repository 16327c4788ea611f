"""Per-label Ray metrics, exported through each node's Prometheus endpoint to the dashboard."""

from __future__ import annotations

from ray.util import metrics

TAG_KEYS = ("run", "label")


class LabelMetrics:
    """Gauges tagged (run, label); a Counter for steps so rates work in Grafana."""

    def __init__(self, run_id: str, label: int, start_step: int = 0):
        self.tags = {"run": run_id, "label": str(label)}
        self.steps = metrics.Counter("wcgan_generator_steps", "Generator steps done by a label actor", TAG_KEYS)
        self.gauges = {
            name: metrics.Gauge(f"wcgan_{name}", description, TAG_KEYS)
            for name, description in (
                ("step", "Generator step reached by a label actor"),
                ("generator_loss", "Generator loss (-E[D(G(z))])"),
                ("critic_loss", "Critic loss incl. gradient penalty"),
                ("wasserstein", "Critic's Wasserstein distance estimate E[D(x)] - E[D(G(z))]"),
                ("images_per_s", "Real images per second seen by the critic"),
                ("budget_left_s", "Training budget left, seconds"),
            )
        }
        self._last_step = start_step  # a resumed actor does not recount restored steps

    def record(self, step: int, values: dict[str, float]) -> None:
        if step > self._last_step:
            self.steps.inc(step - self._last_step, tags=self.tags)
            self._last_step = step
        self.gauges["step"].set(step, tags=self.tags)
        for name, value in values.items():
            gauge = self.gauges.get(name)
            if gauge is not None:
                gauge.set(value, tags=self.tags)
