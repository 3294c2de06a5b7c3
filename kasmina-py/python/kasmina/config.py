"""The layer configuration (SPEC 1, 2, 5.3, 6) with the SPEC's defaults."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

__all__ = ["GraftingConfig", "LayerConfig"]


@dataclass(frozen=True)
class GraftingConfig:
    """Alpha schedule parameters (SPEC 6)."""

    ramp_epochs: int = 30
    """Epochs of a full FIXED_RAMP."""
    performance_k: float = 10.0
    """Sigmoid gain of PERFORMANCE_LINKED."""
    drift_threshold: float = 0.12
    """DRIFT_CONTROLLED holds while a seed's drift exceeds this."""
    grad_lower: float = 0.1
    """GRAD_NORM_GATED holds while grad_norm is below this..."""
    grad_upper: float = 1.0
    """...or above this."""


@dataclass(frozen=True)
class LayerConfig:
    """Everything of a layer's configuration except its shape (``hidden_dim``, ``num_seeds``).

    ``stability="strict"`` clamps blend and FOSSILIZED outputs to ``clamp_mean ± strict_k *
    clamp_std`` (SPEC 5.3). The layer validates the values and raises
    :class:`kasmina.ConfigError` for one out of range.
    """

    dead_eps: float = 1e-6
    """Finite elements with ``|x| < dead_eps`` count as dead."""
    snr_eps: float = 1e-8
    """Added to the variance under the square root of the SNR."""
    stability: Literal["off", "strict"] = "off"
    """Numerical stability mode."""
    strict_k: float = 6.0
    """Width of the strict-mode clamp band, in standard deviations."""
    embargo_epochs: int = 10
    """Epochs a CULLED or ROLLED_BACK seed waits before DORMANT."""
    stabilization_epochs: int = 5
    """Epochs in STABILIZATION before EVALUATING."""
    grafting: GraftingConfig = field(default_factory=GraftingConfig)
    """Alpha schedule parameters."""

    def to_json(self) -> str:
        """The JSON the native layer reads (the ``kasmina.config`` of snapshots, without the shape)."""
        if self.stability not in ("off", "strict"):
            from .errors import ConfigError

            raise ConfigError(f"stability must be 'off' or 'strict', got {self.stability!r}")
        stability: dict[str, Any] = (
            {"mode": "off"} if self.stability == "off" else {"mode": "strict", "k": self.strict_k}
        )
        return json.dumps(
            {
                "dead_eps": self.dead_eps,
                "snr_eps": self.snr_eps,
                "stability": stability,
                "embargo_epochs": self.embargo_epochs,
                "stabilization_epochs": self.stabilization_epochs,
                "grafting": asdict(self.grafting),
            }
        )

    @staticmethod
    def from_json(text: str) -> LayerConfig:
        """The config of a layer's JSON (``hidden_dim`` and ``num_seeds`` are ignored)."""
        d = json.loads(text)
        st = d.get("stability", {"mode": "off"})
        return LayerConfig(
            dead_eps=d["dead_eps"],
            snr_eps=d["snr_eps"],
            stability=st["mode"],
            strict_k=st.get("k", 6.0),
            embargo_epochs=d["embargo_epochs"],
            stabilization_epochs=d["stabilization_epochs"],
            grafting=GraftingConfig(**d["grafting"]),
        )
