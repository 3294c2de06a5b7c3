"""A simple controller that grows the seeds of one :class:`kasmina.KasminaLayer`.

It decides from the layer's telemetry and a held-out loss the trainer measures each epoch:

- while the held-out loss still improves, it waits; when it has improved by less than
  ``min_improvement`` (relative) over ``patience`` epochs, it germinates the ``cohort`` dormant
  seeds whose chunks carry the largest gradient norms (the most pressure the host cannot absorb);
- the seed starts from a neutral blueprint (for MLP ``w = 1``, the identity on positive inputs,
  plus optional noise; scale 1), goes GERMINATED -> TRAINING -> GRAFTING, where alpha ramps by
  the seed's strategy (PERFORMANCE_LINKED by default, with the epoch's loss improvement as its
  signal); the layer moves it on to STABILIZATION and EVALUATING by itself;
- in EVALUATING it keeps the seed (FINE_TUNING -> FOSSILIZED) when the held-out loss is lower
  with it, and culls it otherwise. "Lower" is, when ``held_out`` is given, lower than the same
  network's held-out loss with the seed's chunk passed through unchanged (an ablation of that
  seed alone, so each seed of a cohort is judged on its own); without it, lower than the loss
  when the seed was germinated. With ``retry_culled`` a culled seed may germinate again once the
  layer's embargo has returned it to DORMANT.

One cohort grows at a time, and at most ``max_seeds`` seeds germinate in all (with
``retry_culled``, a culled seed no longer counts). Use one controller per layer::

    ctl = Controller(layer)
    for epoch in range(epochs):
        train_one_epoch()
        ctl.observe(held_out_loss())
        report = layer.end_epoch(ctl.signals())
        ctl.step(epoch, report)
"""

from __future__ import annotations

from collections.abc import Callable
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
    cohort: int = 1
    """Seeds germinated together at a stall."""
    held_out: Callable[[], float] | None = None
    """The network's held-out loss now (called without gradients); when given, EVALUATING
    compares it with and without the seed (see the module's docs)."""
    retry_culled: bool = False
    """Whether a culled seed may germinate again once it is DORMANT."""
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

    def ablated_loss(self, seed_id: int) -> float:
        """The held-out loss with seed ``seed_id``'s chunk passed through the layer unchanged."""
        if self.held_out is None:
            raise ValueError("ablated_loss needs the controller's held_out function")
        c = self.layer.chunk_size
        cols = slice(seed_id * c, (seed_id + 1) * c)

        def bypass(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> torch.Tensor:
            out = out.clone()
            out[..., cols] = inputs[0][..., cols]
            return out

        handle = self.layer.register_forward_hook(bypass)
        try:
            with torch.no_grad():
                return float(self.held_out())
        finally:
            handle.remove()

    def keeps(self, seed_id: int, loss: float) -> bool:
        """Whether seed ``seed_id`` in EVALUATING earns its place (see the module's docs)."""
        if self.held_out is not None:
            return loss < self.ablated_loss(seed_id)
        return loss < self.baseline[seed_id]

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
                if self.keeps(i, loss):
                    layer.transition(i, LifecycleState.FINE_TUNING)
                    layer.transition(i, LifecycleState.FOSSILIZED)
                    self.fossilized.append(i)
                    self.events.append(GrowthEvent(epoch, i, "fossilized", loss))
                else:
                    layer.cull(i)
                    self.culled.append(i)
                    self.events.append(GrowthEvent(epoch, i, "culled", loss))
                    if self.retry_culled:
                        del self.baseline[i]
        if busy or not self.stalled() or len(self.baseline) >= self.max_seeds:
            return
        dormant = [r for r in report.seeds if layer.seed(r.seed_id).lifecycle == LifecycleState.DORMANT]  # type: ignore[attr-defined]
        dormant = [r for r in dormant if r.seed_id not in self.baseline]
        if not dormant:
            return
        dormant.sort(key=lambda r: r.grad_norm, reverse=True)
        for pick in dormant[: min(self.cohort, self.max_seeds - len(self.baseline))]:
            # Each germination's blueprint id is its number.
            blueprint_id = 1 + sum(e.what == "germinated" for e in self.events)
            layer.germinate(pick.seed_id, blueprint_id, self.blueprint_type, self.strategy)
            self.baseline[pick.seed_id] = loss
            self.events.append(GrowthEvent(epoch, pick.seed_id, "germinated", loss))
