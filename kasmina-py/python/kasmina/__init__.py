"""Kasmina: the seed layer of a morphogenetic neural network, for PyTorch.

A :class:`KasminaLayer` watches an activation ``[..., H]`` through a lattice of seeds. Dormant
seeds are an exact identity; a controller germinates seeds where telemetry shows the network
needs capacity, and they blend small learned blueprints into their chunk of the activation as
they move through their lifecycle. The layer runs the native Rust backends (CPU, CUDA) on the
tensors' own memory, with autograd and ``torch.compile`` support::

    import torch, kasmina

    layer = kasmina.KasminaLayer(768, 16, device="cuda", dtype=torch.bfloat16)
    layer.germinate(3, 1, kasmina.BlueprintType.MLP, kasmina.GraftingStrategy.FIXED_RAMP)
    y = layer(x)                 # differentiable; weight [S, C] and scale [S] are nn.Parameters
    report = layer.end_epoch()   # per-seed telemetry, lifecycle step
"""

from __future__ import annotations

from . import reference
from ._kasmina import SCHEMA_VERSION, Report, SeedReport, cuda_device_count
from .config import GraftingConfig, LayerConfig
from .enums import BlueprintType, GraftingStrategy, LifecycleState
from .errors import (
    BackendError,
    ConfigError,
    DeviceIntegrityError,
    DeviceUnavailableError,
    InvalidArgumentError,
    KasminaError,
    OutOfMemoryError,
    SnapshotError,
    TransitionError,
)
from .layer import KasminaLayer, LayerStateView, SeedSignal, SeedView, TransitionEvent

__all__ = [
    "SCHEMA_VERSION",
    "BackendError",
    "BlueprintType",
    "ConfigError",
    "DeviceIntegrityError",
    "DeviceUnavailableError",
    "GraftingConfig",
    "GraftingStrategy",
    "InvalidArgumentError",
    "KasminaError",
    "KasminaLayer",
    "LayerConfig",
    "LayerStateView",
    "LifecycleState",
    "OutOfMemoryError",
    "Report",
    "SeedReport",
    "SeedSignal",
    "SeedView",
    "SnapshotError",
    "TransitionError",
    "TransitionEvent",
    "cuda_device_count",
    "reference",
]
