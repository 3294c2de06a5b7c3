"""The exceptions of the ``kasmina`` package.

Every error the layer raises is a :class:`KasminaError`; the subclasses also derive from the
built-in exception a caller would expect (``ValueError`` for bad arguments, ``RuntimeError``
for device failures), so ``except ValueError`` keeps working. A call that raised changed nothing.
"""

from __future__ import annotations

__all__ = [
    "BackendError",
    "ConfigError",
    "DeviceIntegrityError",
    "DeviceUnavailableError",
    "InvalidArgumentError",
    "KasminaError",
    "OutOfMemoryError",
    "SnapshotError",
    "TransitionError",
]


class KasminaError(Exception):
    """Base class of every error the layer raises."""


class InvalidArgumentError(KasminaError, ValueError):
    """A tensor or value does not fit the layer: shape, dtype, device, contiguity, seed id, enum value."""


class ConfigError(KasminaError, ValueError):
    """The layer configuration is invalid (``hidden_dim % num_seeds != 0``, a value out of range...)."""


class TransitionError(KasminaError, ValueError):
    """A lifecycle transition is not legal from the seed's state (SPEC 3); the seed is unchanged."""


class SnapshotError(KasminaError, OSError):
    """A snapshot could not be read or written, or failed verification (truncated, corrupt, newer)."""


class OutOfMemoryError(KasminaError, MemoryError):
    """Host memory for a size that came from input (a layer's parameters, a snapshot's tensors) could not be had."""


class BackendError(KasminaError, RuntimeError):
    """The device reported an error (out of memory, compile failure, lost device)."""


class DeviceUnavailableError(BackendError):
    """The requested device cannot run here (no CUDA driver, no such device)."""


class DeviceIntegrityError(BackendError):
    """What the device holds for its kernels (the seed state, the weights or the constants derived
    from them) is not what the host uploaded; checked after every upload and before every save."""
