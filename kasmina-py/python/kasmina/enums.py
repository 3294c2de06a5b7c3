"""The SPEC's enums as Python ``IntEnum``s (their values are the raw values of snapshots)."""

from __future__ import annotations

from enum import IntEnum

__all__ = ["BlueprintType", "GraftingStrategy", "LifecycleState"]


class BlueprintType(IntEnum):
    """The blueprint a germinated seed grows (SPEC 4)."""

    RESIDUAL = 0
    """``t_j = x_j + w_j * s``"""
    ATTENTION = 1
    """``t_j = x_j * softmax(w)_j``"""
    MLP = 2
    """``t_j = relu(x_j * w_j) * s``"""
    CONV = 3
    """``t_j = s * (w_0 x_j + w_1 x_{j-1} + w_2 x_{j-2})`` (causal, inside the chunk)"""


class GraftingStrategy(IntEnum):
    """How alpha ramps while a seed is GRAFTING (SPEC 6)."""

    FIXED_RAMP = 0
    """``alpha += 1 / ramp_epochs``"""
    PERFORMANCE_LINKED = 1
    """a ramp scaled by ``2 * sigmoid(k * improvement)``"""
    DRIFT_CONTROLLED = 2
    """a fixed ramp that holds while ``drift > drift_threshold``"""
    GRAD_NORM_GATED = 3
    """a fixed ramp that holds while ``grad_norm`` is outside ``[grad_lower, grad_upper]``"""


class LifecycleState(IntEnum):
    """A seed's place in its lifecycle (SPEC 3)."""

    DORMANT = 0
    GERMINATED = 1
    TRAINING = 2
    GRAFTING = 3
    STABILIZATION = 4
    EVALUATING = 5
    FINE_TUNING = 6
    FOSSILIZED = 7
    CULLED = 8
    CANCELLED = 9
    ROLLED_BACK = 10

    @property
    def forward_mode(self) -> str:
        """``identity``, ``blend`` or ``blueprint``: what the forward does with the seed's chunk."""
        if self == LifecycleState.FOSSILIZED:
            return "blueprint"
        if LifecycleState.GRAFTING <= self <= LifecycleState.FINE_TUNING:
            return "blend"
        return "identity"
