"""``KasminaLayer``: the Kasmina seed layer as a ``torch.nn.Module``."""

from __future__ import annotations

import ctypes
import math
import os
import pathlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from . import _kasmina
from ._kasmina import Report
from ._ops import (
    DTYPE_CODES,
    identity_forward,
    identity_forward_cuda,
    identity_grad,
    kasmina_forward,
    register,
    stream_of,
)
from .config import LayerConfig
from .enums import BlueprintType, GraftingStrategy, LifecycleState
from .errors import InvalidArgumentError

__all__ = ["KasminaLayer", "LayerStateView", "SeedSignal", "SeedView", "TransitionEvent"]


class SeedSignal(NamedTuple):
    """What the trainer reports about one seed at ``end_epoch`` (SPEC 6)."""

    improvement: float = 0.0
    """Loss improvement attributed to the seed (PERFORMANCE_LINKED)."""
    drift: float = 0.0
    """Weight drift of the seed's blueprint (DRIFT_CONTROLLED)."""


Signals = Mapping[int, SeedSignal | Sequence[float]] | Sequence[SeedSignal | Sequence[float]] | None
"""Per-seed signals: ``None`` (all 0), a list with one entry per seed, or a dict by seed id."""


class TransitionEvent(NamedTuple):
    """One lifecycle transition, as the layer's event log recorded it."""

    seed_id: int
    from_state: LifecycleState
    to_state: LifecycleState
    epoch: int
    reason: str


@dataclass(frozen=True)
class SeedView:
    """One seed's state: lifecycle, blueprint, alpha and parameters (copies; changing them changes nothing)."""

    seed_id: int
    lifecycle: LifecycleState
    blueprint_id: int
    blueprint_type: BlueprintType
    grafting_strategy: GraftingStrategy
    alpha: float
    epochs_in_state: int
    last_update_epoch: int
    clamp_mean: float | None
    """Strict-mode reference mean (``None`` until an epoch sets it)."""
    clamp_std: float | None
    weights: Tensor
    """The seed's ``C`` blueprint weights (a copy of its row of ``KasminaLayer.weight``)."""
    scale: float


@dataclass(frozen=True)
class LayerStateView:
    """A layer's state at one moment: its epoch, configuration and every seed."""

    epoch: int
    hidden_dim: int
    num_seeds: int
    chunk_size: int
    config: LayerConfig
    seeds: tuple[SeedView, ...]

    def count(self, state: LifecycleState) -> int:
        """How many seeds are in ``state``."""
        return sum(1 for s in self.seeds if s.lifecycle == state)


def _load_nvrtc() -> None:
    """Loads the NVRTC library that PyTorch's wheels ship (``site-packages/nvidia/*/lib``), once.

    The native layer compiles its CUDA kernels with NVRTC, which it finds by library name; a
    machine without the CUDA toolkit has it only inside those wheels, where a lookup by name does
    not reach. Once loaded into the process, the lookup by name finds it there.
    """
    global _NVRTC_LOADED
    if _NVRTC_LOADED:
        return
    _NVRTC_LOADED = True
    try:
        import nvidia  # the namespace package of PyTorch's CUDA wheels
    except ImportError:
        return
    for root in map(pathlib.Path, getattr(nvidia, "__path__", [])):
        for lib in sorted(root.glob("*/lib/libnvrtc.so.*")):
            if "builtins" in lib.name:
                continue
            try:
                ctypes.CDLL(str(lib), mode=ctypes.RTLD_GLOBAL)
                return
            except OSError:
                continue


_NVRTC_LOADED = False


def _device(device: str | torch.device) -> torch.device:
    d = torch.device(device)
    if d.type == "cuda" and d.index is None:
        d = torch.device("cuda", torch.cuda.current_device() if torch.cuda.is_available() else 0)
    if d.type not in ("cpu", "cuda"):
        raise InvalidArgumentError(f"device {d} is not supported (cpu or cuda)")
    if d.type == "cuda":
        _load_nvrtc()
    return d


def _device_name(d: torch.device) -> str:
    return "cpu" if d.type == "cpu" else f"cuda:{d.index}"


def _enum(cls: type, value: Any, what: str) -> int:
    """The raw value of ``value`` as a member of the IntEnum ``cls`` (a clear error otherwise)."""
    try:
        return int(cls(value))
    except (ValueError, TypeError):
        names = ", ".join(f"{m.name} ({int(m)})" for m in cls)
        raise InvalidArgumentError(f"{value!r} is not a valid {what}: one of {names}") from None


def _check_dtype(dtype: torch.dtype) -> torch.dtype:
    if dtype not in DTYPE_CODES:
        raise InvalidArgumentError(f"dtype {dtype} is not supported (float32, float16 or bfloat16)")
    return dtype


class KasminaLayer(nn.Module):
    """The Kasmina seed layer: a lattice of ``num_seeds`` seeds over an activation of width
    ``hidden_dim`` (each seed owns ``hidden_dim // num_seeds`` contiguous columns).

    Dormant seeds are an exact identity; germinated seeds blend a small learned blueprint into
    their chunk as a controller moves them through their lifecycle (SPEC 3). Every forward also
    gathers each seed's telemetry, which :meth:`end_epoch` turns into a report.

    The blueprint parameters are ordinary ``nn.Parameter``s, :attr:`weight` ``[S, C]`` and
    :attr:`scale` ``[S]`` (float32 whatever the activation dtype), so any optimizer,
    ``state_dict()`` / ``load_state_dict()`` and DDP handle them; the seeds' lifecycle state
    travels in the state dict too (as the module's extra state, a verified snapshot).

    The forward runs the native backend on the input's own memory: CPU tensors in place through
    their data pointers, CUDA tensors in place on PyTorch's current stream, with no host round
    trip and no synchronization (only :meth:`end_epoch` and the state views wait for the device).

    Args:
        hidden_dim: ``H``, the width of the activation (the last dimension of the input).
        num_seeds: ``S``; ``H`` must be a multiple of it.
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        dtype: the activation dtype the layer takes and returns (float32, float16, bfloat16).
        config: a :class:`LayerConfig` (or a dict of its fields); the SPEC defaults otherwise.
    """

    weight: nn.Parameter
    scale: nn.Parameter

    def __init__(
        self,
        hidden_dim: int,
        num_seeds: int,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        config: LayerConfig | Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        dev = _device(device)
        self.dtype = _check_dtype(dtype)
        if isinstance(config, Mapping):
            config = LayerConfig(**config)
        cfg_json = config.to_json() if config is not None else None
        core = _kasmina.Layer(int(hidden_dim), int(num_seeds), _device_name(dev), cfg_json, stream_of(dev))
        self._attach(core, dev)
        c = self.chunk_size
        self.weight = nn.Parameter(torch.zeros(self.num_seeds, c, device=dev, dtype=torch.float32))
        self.scale = nn.Parameter(torch.ones(self.num_seeds, device=dev, dtype=torch.float32))

    def _attach(self, core: _kasmina.Layer, dev: torch.device) -> None:
        self._core = core
        self._device = dev
        self._cuda = dev.type == "cuda"
        state = core.state()
        self.hidden_dim: int = state["hidden_dim"]
        self.num_seeds: int = state["num_seeds"]
        self._handle = register(self)

    # ------------------------------------------------------------------ properties

    @property
    def device(self) -> torch.device:
        """The device the layer runs on."""
        return self._device

    @property
    def chunk_size(self) -> int:
        """``C = hidden_dim // num_seeds``, the columns each seed owns."""
        return self.hidden_dim // self.num_seeds

    @property
    def config(self) -> LayerConfig:
        """The layer's configuration."""
        return LayerConfig.from_json(self._core.config_json())

    @property
    def epoch(self) -> int:
        """The current epoch (incremented by :meth:`end_epoch`)."""
        return int(self._core.state()["epoch"])

    def extra_repr(self) -> str:
        return (
            f"hidden_dim={self.hidden_dim}, num_seeds={self.num_seeds}, device={self.device}, "
            f"dtype={self.dtype}, epoch={self.epoch}"
        )

    # ------------------------------------------------------------------ forward

    def forward(self, x: Tensor) -> Tensor:
        """``y = layer(x)`` for ``x`` of shape ``[..., hidden_dim]`` (flattened to rows), same shape and dtype.

        Raises :class:`kasmina.InvalidArgumentError` (a ``ValueError``) for an input of the wrong
        width, dtype or device, or one that is not contiguous; the layer is then unchanged.
        """
        w, sc = self.weight, self.scale
        if not (
            isinstance(x, Tensor)
            and x.dim() > 0
            and x.shape[-1] == self.hidden_dim
            and x.dtype is self.dtype
            and (x.is_cuda and x.get_device() == self._device.index if self._cuda else x.is_cpu)
            and x.is_contiguous()
            and (w.is_cuda and sc.is_cuda if self._cuda else w.is_cpu and sc.is_cpu)
        ):
            self._explain(x)
        if x.dim() == 2:
            return self._forward_rows(x)
        return self._forward_rows(x.reshape(-1, self.hidden_dim)).reshape(x.shape)

    def _forward_rows(self, x: Tensor) -> Tensor:
        """The forward of a checked ``[B, H]`` input."""
        if x.requires_grad and not torch.compiler.is_compiling() and torch.is_grad_enabled() and self._core.identity():
            # Every seed is an identity: no seed reads the parameters, so they stay out of the
            # graph (their .grad stays None and optimizers skip them, which spares a CUDA
            # training step the optimizer's launch for the layer's float32 parameters).
            if not self._cuda:
                return identity_forward(self, x)
            return identity_forward_cuda(self, x)
        return kasmina_forward(x, self.weight, self.scale, self._handle)

    def _identity_grad(self, grads: tuple[Tensor, ...]) -> None:
        """The gradient pre-hook of :func:`kasmina._ops.identity_forward` (``grads = (dL/dy,)``)."""
        if grads[0] is not None:
            identity_grad(self, grads[0])

    def _explain(self, x: object) -> None:
        """Raises the error that says why ``x`` (or the parameters) cannot go through :meth:`forward`."""
        if not isinstance(x, Tensor):
            raise InvalidArgumentError(f"expected a torch.Tensor, got {type(x).__name__}")
        if x.dim() == 0 or x.shape[-1] != self.hidden_dim:
            raise InvalidArgumentError(
                f"expected an input of shape [..., {self.hidden_dim}] (the layer's hidden_dim), got {list(x.shape)}"
            )
        if x.dtype != self.dtype:
            raise InvalidArgumentError(
                f"expected a {self.dtype} input (the layer's dtype), got {x.dtype}; build the layer with "
                f"dtype={x.dtype} or convert it with .to({x.dtype})"
            )
        if x.device != self._device:
            raise InvalidArgumentError(f"expected an input on {self._device} (the layer's device), got {x.device}")
        if not x.is_contiguous():
            raise InvalidArgumentError(
                "expected a contiguous input (the layer reads it in place); call .contiguous() first"
            )
        raise InvalidArgumentError(
            f"the parameters are on {self.weight.device}, the layer on {self._device}: move the whole "
            "module with .to(device) instead of its parameters"
        )

    # ------------------------------------------------------------------ seed API

    def germinate(
        self,
        seed_id: int,
        blueprint_id: int,
        blueprint_type: BlueprintType | int,
        strategy: GraftingStrategy | int = GraftingStrategy.FIXED_RAMP,
    ) -> None:
        """DORMANT -> GERMINATED with a blueprint (``blueprint_id`` is the caller's, 1..65535)."""
        self._request(
            self._core.germinate,
            int(seed_id),
            int(blueprint_id),
            _enum(BlueprintType, blueprint_type, "blueprint type"),
            _enum(GraftingStrategy, strategy, "grafting strategy"),
        )

    def transition(self, seed_id: int, state: LifecycleState | int) -> None:
        """A controller's transition of one seed (SPEC 3); an illegal one raises :class:`kasmina.TransitionError`."""
        self._request(self._core.transition, int(seed_id), _enum(LifecycleState, state, "lifecycle state"))

    def cull(self, seed_id: int) -> None:
        """TRAINING, GRAFTING ... FINE_TUNING -> CULLED (back to DORMANT once the embargo has passed)."""
        self.transition(seed_id, LifecycleState.CULLED)

    def cancel(self, seed_id: int) -> None:
        """GERMINATED or TRAINING -> CANCELLED (back to DORMANT at the next epoch)."""
        self._request(self._core.cancel, int(seed_id))

    def set_alpha(self, seed_id: int, alpha: float) -> None:
        """Places a seed's blend factor directly (clamped to [0, 1]; NaN raises)."""
        self._request(self._core.set_alpha, int(seed_id), float(alpha))

    def set_seed_params(self, seed_id: int, weights: Tensor | Sequence[float], scale: float = 1.0) -> None:
        """Sets one seed's blueprint weights (``chunk_size`` values) and scale, e.g. a controller's initialisation."""
        if not 0 <= seed_id < self.num_seeds:
            raise InvalidArgumentError(f"seed id {seed_id} is out of range: the layer has {self.num_seeds} seeds")
        w = torch.as_tensor(weights, dtype=torch.float32).reshape(-1)
        if w.numel() != self.chunk_size:
            raise InvalidArgumentError(f"expected {self.chunk_size} weights for seed {seed_id}, got {w.numel()}")
        with torch.no_grad():
            self.weight[seed_id].copy_(w.to(self.weight.device))
            self.scale[seed_id].fill_(float(scale))

    def end_epoch(self, signals: Signals = None) -> Report:
        """Ends the epoch (SPEC 6) and returns its report.

        Consolidates the telemetry of every forward and backward since the last call, resets it,
        advances alpha of GRAFTING seeds by their strategy (``signals`` gives the trainer's
        ``improvement`` and ``drift`` per seed), applies the automatic transitions and increments
        the epoch. Seeds that return to DORMANT get their parameters reset (weights 0, scale 1).
        This is the one call that waits for the device.
        """
        self._sync_params_to_core()
        report, reset = self._core.end_epoch(self._signals(signals), stream_of(self._device))
        self._reset_params(reset)
        return report

    def telemetry(self) -> Report:
        """The report of the statistics gathered since the last :meth:`end_epoch`, without ending the epoch."""
        return self._core.telemetry(stream_of(self._device))

    def events(self) -> list[TransitionEvent]:
        """The transitions recorded since the last call (the log is emptied)."""
        return [
            TransitionEvent(s, LifecycleState(f), LifecycleState(t), e, r)
            for s, f, t, e, r in self._core.drain_events()
        ]

    @property
    def state(self) -> LayerStateView:
        """The whole layer's state (a snapshot view, with the current parameters)."""
        st = self._core.state()
        w = self.weight.detach().to("cpu", copy=True)
        s = self.scale.detach().to("cpu")
        seeds = tuple(self._seed_view(st, i, w[i], float(s[i])) for i in range(self.num_seeds))
        return LayerStateView(
            epoch=st["epoch"],
            hidden_dim=self.hidden_dim,
            num_seeds=self.num_seeds,
            chunk_size=self.chunk_size,
            config=self.config,
            seeds=seeds,
        )

    def seed(self, seed_id: int) -> SeedView:
        """One seed's state."""
        if not 0 <= seed_id < self.num_seeds:
            raise InvalidArgumentError(f"seed id {seed_id} is out of range: the layer has {self.num_seeds} seeds")
        st = self._core.state()
        w = self.weight.detach()[seed_id].to("cpu", copy=True)
        return self._seed_view(st, seed_id, w, float(self.scale.detach()[seed_id]))

    @staticmethod
    def _seed_view(st: dict[str, Any], i: int, w: Tensor, scale: float) -> SeedView:
        def opt(v: float) -> float | None:
            return None if math.isnan(v) else v

        return SeedView(
            seed_id=i,
            lifecycle=LifecycleState(st["lifecycle"][i]),
            blueprint_id=st["blueprint_id"][i],
            blueprint_type=BlueprintType(st["blueprint_type"][i]),
            grafting_strategy=GraftingStrategy(st["grafting_strategy"][i]),
            alpha=st["alpha"][i],
            epochs_in_state=st["epochs_in_state"][i],
            last_update_epoch=st["last_update_epoch"][i],
            clamp_mean=opt(st["clamp_mean"][i]),
            clamp_std=opt(st["clamp_std"][i]),
            weights=w,
            scale=scale,
        )

    # ------------------------------------------------------------------ snapshots

    def save(self, path: str | os.PathLike[str]) -> None:
        """Writes the layer (state and current parameters) as a snapshot the ``kasmina`` command
        reads: safetensors, checksummed, written atomically."""
        self._sync_params_to_core()
        self._core.save(os.fspath(path))

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> KasminaLayer:
        """A layer from a snapshot file (verified; a bad file raises :class:`kasmina.SnapshotError`)."""
        dev = _device(device)
        core = _kasmina.Layer.load(os.fspath(path), _device_name(dev), stream_of(dev))
        return cls._from_core(core, dev, dtype)

    @classmethod
    def from_bytes(
        cls, data: bytes, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
    ) -> KasminaLayer:
        """A layer from a snapshot's bytes (see :meth:`to_bytes`)."""
        dev = _device(device)
        core = _kasmina.Layer.from_bytes(bytes(data), _device_name(dev), stream_of(dev))
        return cls._from_core(core, dev, dtype)

    def to_bytes(self) -> bytes:
        """The layer as snapshot bytes (state and current parameters)."""
        self._sync_params_to_core()
        return bytes(self._core.to_bytes())

    @classmethod
    def _from_core(cls, core: _kasmina.Layer, dev: torch.device, dtype: torch.dtype) -> KasminaLayer:
        layer = cls.__new__(cls)
        nn.Module.__init__(layer)
        layer.dtype = _check_dtype(dtype)
        layer._attach(core, dev)
        w, s = layer._core_params(dev)
        layer.weight = nn.Parameter(w)
        layer.scale = nn.Parameter(s)
        return layer

    def checksum(self) -> int:
        """CRC-32 of the state with the current parameters (SPEC 2.1), as the snapshot stores it."""
        self._sync_params_to_core()
        return int(self._core.checksum())

    def device_checksum(self) -> int:
        """CRC-32 of the state as the device holds it (equal to :meth:`checksum`)."""
        self._sync_params_to_core()
        return int(self._core.device_checksum(stream_of(self._device)))

    def kernel_checksum(self) -> int:
        """CRC-32 of what the kernels read, as the host derives it: the state with the current
        parameters plus the per-seed constants derived from them (effective alpha, clamp band,
        CONV taps, ATTENTION's softmax)."""
        self._sync_params_to_core()
        return int(self._core.checksum(kernel=True))

    def device_kernel_checksum(self) -> int:
        """:meth:`kernel_checksum` of what the device holds, read back from it. The layer compares
        the two itself after every state upload and before every save, and raises
        :class:`kasmina.DeviceIntegrityError` when they differ."""
        self._sync_params_to_core()
        return int(self._core.device_checksum(stream_of(self._device), kernel=True))

    # ------------------------------------------------------------------ module plumbing

    def get_extra_state(self) -> dict[str, Any]:
        """The seeds' lifecycle state for ``state_dict()``: the layer's snapshot as bytes."""
        data = self.to_bytes()
        return {"kasmina_snapshot": torch.frombuffer(bytearray(data), dtype=torch.uint8)}

    def set_extra_state(self, state: Any) -> None:
        """Restores the seeds' state from ``load_state_dict()`` (the parameters come with it)."""
        if not isinstance(state, Mapping) or "kasmina_snapshot" not in state:
            raise InvalidArgumentError("the extra state is not a KasminaLayer's (no 'kasmina_snapshot')")
        data = bytes(state["kasmina_snapshot"].cpu().numpy().tobytes())
        core = _kasmina.Layer.from_bytes(data, _device_name(self._device), stream_of(self._device))
        st = core.state()
        if (st["hidden_dim"], st["num_seeds"]) != (self.hidden_dim, self.num_seeds):
            raise InvalidArgumentError(
                f"the state dict holds a layer of hidden_dim={st['hidden_dim']}, num_seeds={st['num_seeds']}; "
                f"this one has {self.hidden_dim}, {self.num_seeds}"
            )
        self._core = core
        self._sync_params_to_core()

    def _apply(self, fn: Any, recurse: bool = True) -> KasminaLayer:
        """``.to(device)`` moves the native layer along (its state; the epoch's statistics so far
        stay behind); ``.to(dtype)`` / ``.half()`` / ``.bfloat16()`` change the activation dtype
        the layer takes and leave the parameters float32 (SPEC 2), untouched."""
        before = self._device
        # What `fn` does to floating-point tensors: a cast shows on one of two probes.
        p32 = fn(torch.zeros(1, device=before, dtype=torch.float32))
        p16 = fn(torch.zeros(1, device=before, dtype=torch.float16))
        cast = p32.dtype if p32.dtype != torch.float32 else (p16.dtype if p16.dtype != torch.float16 else None)
        param_fn = fn
        if cast is not None:
            if cast in DTYPE_CODES:
                self.dtype = cast
            target = p32.device

            def param_fn(t: Tensor) -> Tensor:
                return t.to(target)

        super()._apply(param_fn, recurse)
        after = self.weight.device
        if after != before:
            data = self._core.to_bytes()
            dev = _device(after)
            self._core = _kasmina.Layer.from_bytes(data, _device_name(dev), stream_of(dev))
            self._device = dev
            self._cuda = dev.type == "cuda"
            self._sync_params_to_core()
        return self

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_core"] = self.to_bytes()
        state.pop("_handle", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        data = state.pop("_core")
        super().__setstate__(state)
        self._core = _kasmina.Layer.from_bytes(data, _device_name(self._device), stream_of(self._device))
        self._handle = register(self)

    # ------------------------------------------------------------------ internals

    def _request(self, call: Any, *args: Any) -> None:
        reset = call(*args, stream_of(self._device))
        self._reset_params(reset)

    def _reset_params(self, seeds: Sequence[int]) -> None:
        """Mirrors the core's reset of seeds that returned to DORMANT (weights 0, scale 1)."""
        if not seeds:
            return
        idx = torch.tensor(list(seeds), dtype=torch.long, device=self.weight.device)
        with torch.no_grad():
            self.weight.index_fill_(0, idx, 0.0)
            self.scale.index_fill_(0, idx, 1.0)

    def _sync_params_to_core(self) -> None:
        """Copies the parameters into the native layer's host state (waits for the device on CUDA)."""
        w = self.weight.detach().to("cpu", torch.float32).contiguous()
        s = self.scale.detach().to("cpu", torch.float32).contiguous()
        self._core.set_params(w.data_ptr(), s.data_ptr(), stream_of(self._device))

    def _core_params(self, dev: torch.device) -> tuple[Tensor, Tensor]:
        wb, sb = self._core.params()
        w = torch.frombuffer(bytearray(wb), dtype=torch.float32).reshape(self.num_seeds, self.chunk_size)
        s = torch.frombuffer(bytearray(sb), dtype=torch.float32)
        return w.to(dev), s.to(dev)

    def _signals(self, signals: Signals) -> list[tuple[float, float]] | None:
        if signals is None:
            return None

        def pair(v: SeedSignal | Sequence[float]) -> tuple[float, float]:
            t = tuple(v)
            if len(t) != 2:
                raise InvalidArgumentError(f"a seed's signal is (improvement, drift), got {v!r}")
            return float(t[0]), float(t[1])

        if isinstance(signals, Mapping):
            out = [(0.0, 0.0)] * self.num_seeds
            for k, v in signals.items():
                if not 0 <= int(k) < self.num_seeds:
                    raise InvalidArgumentError(f"signal for seed {k}: the layer has {self.num_seeds} seeds")
                out[int(k)] = pair(v)
            return out
        items = [pair(v) for v in signals]
        if len(items) not in (0, self.num_seeds):
            raise InvalidArgumentError(f"expected 0 or {self.num_seeds} seed signals, got {len(items)}")
        return items or None
