"""A simple controller that grows the seeds of one :class:`kasmina.KasminaLayer`.

It decides from the layer's telemetry and a held-out loss the trainer measures each epoch:

- while the held-out loss still improves, it waits; when it has improved by less than
  ``min_improvement`` (relative) over ``patience`` epochs, it germinates the dormant seed whose
  chunk carries the largest gradient norm (the most pressure the host cannot absorb);
- the seed starts from a neutral blueprint (for MLP ``w = 1``, the identity on positive inputs,
  plus optional noise; scale 1), goes GERMINATED -> TRAINING -> GRAFTING, where alpha ramps by
  the seed's strategy (PERFORMANCE_LINKED by default, with the epoch's loss improvement as its
  signal); the layer moves it on to STABILIZATION and EVALUATING by itself;
- in EVALUATING it compares the held-out loss with the loss when the seed was germinated:
  better -> FINE_TUNING -> FOSSILIZED, otherwise CULLED.

One seed grows at a time, at most ``max_seeds`` in all. Use one controller per layer::

    ctl = Controller(layer)
    for epoch in range(epochs):
        train_one_epoch()
        ctl.observe(held_out_loss())
        report = layer.end_epoch(ctl.signals())
        ctl.step(epoch, report)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .enums import BlueprintType, GraftingStrategy, LifecycleState
from .layer import KasminaLayer, SeedSignal

__all__ = ["Controller", "GrowthEvent"]


@dataclass(frozen=True)
class GrowthEvent:
    """One decision of the controller."""

    epoch: int
    seed: int
    what: str
    """``germinated``, ``grafting``, ``fossilized`` or ``culled``."""
    loss: float
    """The held-out loss the decision was taken at."""


@dataclass
class Controller:
    """Germinates, grafts, fossilizes or culls the seeds of ``layer`` (see the module's docs)."""

    layer: KasminaLayer
    max_seeds: int = 4
    patience: int = 3
    min_improvement: float = 0.01
    blueprint_type: BlueprintType = BlueprintType.MLP
    strategy: GraftingStrategy = GraftingStrategy.PERFORMANCE_LINKED
    init_noise: float = 0.0
    """Standard deviation of the noise added to the neutral start."""
    generator: torch.Generator | None = None
    history: list[float] = field(default_factory=list)
    """The held-out loss of every epoch, as :meth:`observe` received it."""
    baseline: dict[int, float] = field(default_factory=dict)
    fossilized: list[int] = field(default_factory=list)
    culled: list[int] = field(default_factory=list)
    events: list[GrowthEvent] = field(default_factory=list)

    def observe(self, val_loss: float) -> None:
        """Records the epoch's held-out loss (before ``end_epoch``)."""
        self.history.append(float(val_loss))

    def signals(self) -> dict[int, SeedSignal]:
        """The epoch's relative improvement of the held-out loss, as every seed's signal."""
        if len(self.history) < 2:
            return {}
        imp = (self.history[-2] - self.history[-1]) / max(self.history[-2], 1e-12)
        return {i: SeedSignal(improvement=imp) for i in range(self.layer.num_seeds)}

    def stalled(self) -> bool:
        """Whether the held-out loss improved by less than ``min_improvement`` over ``patience`` epochs."""
        h = self.history
        if len(h) <= self.patience:
            return False
        return (h[-self.patience - 1] - h[-1]) / max(h[-self.patience - 1], 1e-12) < self.min_improvement

    @property
    def log(self) -> list[str]:
        """The decisions in words, one line each."""
        return [f"epoch {e.epoch}: seed {e.seed} {e.what} (held-out loss {e.loss:.4f})" for e in self.events]

    def neutral_start(self) -> torch.Tensor:
        """A blueprint's starting weights, chosen without the target: as close to the identity as
        the type allows (MLP ``w = 1``; CONV taps ``(1, 0, 0)``; RESIDUAL and ATTENTION ``w = 0``)."""
        c = self.layer.chunk_size
        w = torch.zeros(c)
        if self.blueprint_type == BlueprintType.MLP:
            w.fill_(1.0)
        elif self.blueprint_type == BlueprintType.CONV:
            w[0] = 1.0
        if self.init_noise > 0:
            w += self.init_noise * torch.randn(c, generator=self.generator)
        return w

    def step(self, epoch: int, report: object) -> None:
        """Decisions after ``end_epoch`` (``report`` is its report)."""
        layer, loss = self.layer, self.history[-1] if self.history else float("inf")
        busy = False
        for s in layer.state.seeds:
            i, st = s.seed_id, s.lifecycle
            if st == LifecycleState.GERMINATED:
                layer.transition(i, LifecycleState.TRAINING)
                layer.set_seed_params(i, self.neutral_start(), 1.0)
                busy = True
            elif st == LifecycleState.TRAINING:
                layer.transition(i, LifecycleState.GRAFTING)
                self.events.append(GrowthEvent(epoch, i, "grafting", loss))
                busy = True
            elif st in (LifecycleState.GRAFTING, LifecycleState.STABILIZATION):
                busy = True
            elif st == LifecycleState.EVALUATING:
                if loss < self.baseline[i]:
                    layer.transition(i, LifecycleState.FINE_TUNING)
                    layer.transition(i, LifecycleState.FOSSILIZED)
                    self.fossilized.append(i)
                    self.events.append(GrowthEvent(epoch, i, "fossilized", loss))
                else:
                    layer.cull(i)
                    self.culled.append(i)
                    self.events.append(GrowthEvent(epoch, i, "culled", loss))
        if busy or not self.stalled() or len(self.baseline) >= self.max_seeds:
            return
        dormant = [r for r in report.seeds if layer.seed(r.seed_id).lifecycle == LifecycleState.DORMANT]  # type: ignore[attr-defined]
        dormant = [r for r in dormant if r.seed_id not in self.baseline]
        if not dormant:
            return
        pick = max(dormant, key=lambda r: r.grad_norm)
        layer.germinate(pick.seed_id, 1 + len(self.baseline), self.blueprint_type, self.strategy)
        self.baseline[pick.seed_id] = loss
        self.events.append(GrowthEvent(epoch, pick.seed_id, "germinated", loss))
