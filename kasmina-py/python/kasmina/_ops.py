"""The layer's forward and backward as ``torch.library`` custom ops.

``kasmina::forward(x, weight, scale, handle) -> y`` and ``kasmina::backward(x, g, weight,
scale, handle) -> (dx, dweight, dscale)`` run the native layer on the tensors' own memory:
host memory for CPU tensors, device memory on PyTorch's current stream for CUDA tensors. Each
has a fake (meta) implementation, and the forward has its autograd formula registered, so a
model containing the layer traces under ``torch.compile(fullgraph=True)``. Eager calls take a
plain ``autograd.Function`` over the same two implementations instead: the dispatcher's Python
custom-op path costs about a tenth of a millisecond per call, more than a small layer's work.

``handle`` names the :class:`kasmina.KasminaLayer` whose native state (lifecycle, telemetry
accumulators) the call uses; a compiled graph holds it as a constant, like a module attribute.
The ops have side effects (telemetry accumulates), which is why they are called once per
forward and backward by the module and never recomputed: custom ops are not in the set of
operators the compile partitioner may recompute.
"""

from __future__ import annotations

import itertools
import weakref
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .errors import InvalidArgumentError

if TYPE_CHECKING:
    from .layer import KasminaLayer

__all__ = [
    "DTYPE_CODES",
    "backward_impl",
    "backward_op",
    "forward_impl",
    "forward_op",
    "identity_forward",
    "identity_forward_cuda",
    "identity_grad",
    "kasmina_forward",
    "lookup",
    "register",
    "stream_of",
]

DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
"""Activation dtypes the layer runs, with the code the native module takes."""

_LAYERS: dict[int, weakref.ref[KasminaLayer]] = {}
_NEXT = itertools.count(1)


def register(layer: KasminaLayer) -> int:
    """A new handle for ``layer`` (released when the layer is garbage collected)."""
    handle = next(_NEXT)
    _LAYERS[handle] = weakref.ref(layer)
    weakref.finalize(layer, _LAYERS.pop, handle, None)
    return handle


def lookup(handle: int) -> KasminaLayer:
    """The layer a handle names."""
    ref = _LAYERS.get(int(handle))
    layer = ref() if ref is not None else None
    if layer is None:
        raise InvalidArgumentError(f"no live KasminaLayer has handle {handle}")
    return layer


def stream_of(device: torch.device) -> int:
    """PyTorch's current CUDA stream of ``device`` as a raw handle (0 on the CPU, or where
    PyTorch sees no GPU: the native layer then says why CUDA cannot run)."""
    if device.type == "cuda" and torch.cuda.is_available():
        return int(torch.cuda.current_stream(device).cuda_stream)
    return 0


def _vector_aligned(t: Tensor) -> Tensor:
    """``t`` itself, or a fresh copy where a CUDA tensor's data does not start on a 16-byte
    boundary (a view at an odd offset): the kernels move 16-byte vectors."""
    if t.is_cuda and t.data_ptr() % 16 != 0:
        return t.clone(memory_format=torch.contiguous_format)
    return t


def _params(weight: Tensor, scale: Tensor) -> tuple[Tensor, Tensor]:
    """The parameters as contiguous f32 tensors the native layer reads in place (only their
    addresses are taken, so no detached view is needed)."""
    if weight.dtype is not torch.float32 or scale.dtype is not torch.float32:
        raise InvalidArgumentError(
            f"the blueprint parameters must be float32 (SPEC 2), got weight {weight.dtype} and scale {scale.dtype}"
        )
    return weight.contiguous(), scale.contiguous()


def forward_impl(x: Tensor, weight: Tensor, scale: Tensor, handle: int) -> Tensor:
    """``y = layer(x)`` for ``x`` of shape ``[B, H]``; adds the call's statistics to the layer's telemetry."""
    layer = lookup(handle)
    x = _vector_aligned(x.contiguous())
    y = torch.empty_like(x, memory_format=torch.contiguous_format)
    w, s = _params(weight, scale)
    stream = stream_of(x.device) if x.is_cuda else 0
    layer._core.forward(
        x.data_ptr(), y.data_ptr(), x.shape[0], DTYPE_CODES[x.dtype], w.data_ptr(), s.data_ptr(), stream
    )
    return y


def backward_impl(x: Tensor, g: Tensor, weight: Tensor, scale: Tensor, handle: int) -> tuple[Tensor, Tensor, Tensor]:
    """``(dx, dweight, dscale)`` from ``g = dL/dy`` (SPEC 7); adds ``Σ g²`` to the layer's telemetry."""
    layer = lookup(handle)
    x = _vector_aligned(x.contiguous())
    g = _vector_aligned(g.contiguous())
    w, s = _params(weight, scale)
    dx = torch.empty_like(x, memory_format=torch.contiguous_format)
    dw = torch.empty_like(w, memory_format=torch.contiguous_format)
    ds = torch.empty_like(s, memory_format=torch.contiguous_format)
    layer._core.backward(
        x.data_ptr(),
        g.data_ptr(),
        dx.data_ptr(),
        dw.data_ptr(),
        ds.data_ptr(),
        x.shape[0],
        DTYPE_CODES[x.dtype],
        w.data_ptr(),
        s.data_ptr(),
        stream_of(x.device) if x.is_cuda else 0,
    )
    return dx, dw, ds


@torch.library.custom_op("kasmina::forward", mutates_args=())
def forward_op(x: Tensor, weight: Tensor, scale: Tensor, handle: int) -> Tensor:
    """The forward as a custom op (what ``torch.compile`` traces)."""
    return forward_impl(x, weight, scale, handle)


@forward_op.register_fake
def _forward_fake(x: Tensor, weight: Tensor, scale: Tensor, handle: int) -> Tensor:
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.custom_op("kasmina::backward", mutates_args=())
def backward_op(x: Tensor, g: Tensor, weight: Tensor, scale: Tensor, handle: int) -> tuple[Tensor, Tensor, Tensor]:
    """The backward as a custom op (what ``torch.compile`` traces)."""
    return backward_impl(x, g, weight, scale, handle)


@backward_op.register_fake
def _backward_fake(x: Tensor, g: Tensor, weight: Tensor, scale: Tensor, handle: int) -> tuple[Tensor, Tensor, Tensor]:
    return (
        torch.empty_like(x, memory_format=torch.contiguous_format),
        torch.empty_like(weight, memory_format=torch.contiguous_format),
        torch.empty_like(scale, memory_format=torch.contiguous_format),
    )


def _setup_context(ctx: torch.autograd.function.FunctionCtx, inputs: tuple, output: Tensor) -> None:
    x, weight, scale, handle = inputs
    ctx.save_for_backward(x, weight, scale)
    ctx.handle = handle  # type: ignore[attr-defined]


def _backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> tuple[Tensor, Tensor, Tensor, None]:
    x, weight, scale = ctx.saved_tensors  # type: ignore[attr-defined]
    dx, dw, ds = backward_op(x, grad.contiguous(), weight, scale, ctx.handle)  # type: ignore[attr-defined]
    return dx, dw, ds, None


forward_op.register_autograd(_backward, setup_context=_setup_context)


class _EagerFunction(torch.autograd.Function):
    """The same forward and backward as the custom ops, without the dispatcher's per-call cost
    (about 0.1 ms in eager mode): what an eager model with gradients runs."""

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx, x: Tensor, weight: Tensor, scale: Tensor, handle: int
    ) -> Tensor:
        ctx.save_for_backward(x, weight, scale)
        ctx.handle = handle  # type: ignore[attr-defined]
        return forward_impl(x, weight, scale, handle)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> tuple[Tensor, Tensor, Tensor, None]:
        x, weight, scale = ctx.saved_tensors  # type: ignore[attr-defined]
        dx, dw, ds = backward_impl(x, grad, weight, scale, ctx.handle)  # type: ignore[attr-defined]
        return dx, dw, ds, None


def identity_forward(layer: KasminaLayer, x: Tensor) -> Tensor:
    """The eager forward of a CPU layer whose seeds are all identities, for an ``x`` [B, H] that
    requires gradients: ``y = x`` bit for bit with the call's statistics, and no autograd
    function of its own.

    ``y`` is a clone of ``x`` (its gradient node passes ``dL/dy`` through unchanged, so
    ``dx = g`` costs no copy), and a pre-hook of that node adds ``Σ g²`` to the telemetry in
    the backward. The parameters are not part of the graph: an identity seed does not read them,
    so their ``.grad`` stays ``None`` (the optimizer skips them, as PyTorch does for any
    parameter a step did not use). A plain ``autograd.Function`` costs more than the whole
    layer at small sizes.
    """
    y = x.clone(memory_format=torch.contiguous_format)
    w, s = layer.weight, layer.scale
    # The native forward writes the same bits into y and gathers the statistics of x.
    layer._core.forward(x.data_ptr(), y.data_ptr(), x.shape[0], DTYPE_CODES[x.dtype], w.data_ptr(), s.data_ptr(), 0)
    # A pre-hook of y's gradient node: what a tensor hook on y is, without its handle object.
    y.grad_fn.register_prehook(layer._identity_grad)
    return y


def identity_forward_cuda(layer: KasminaLayer, x: Tensor) -> Tensor:
    """The eager forward of a CUDA layer whose seeds are all identities, for an ``x`` that
    requires gradients: the layer's one kernel each way as always (``y = x`` with the call's
    statistics; ``dx = g`` with ``Σ g²``), with the parameters detached, so they are not part
    of the graph and take no gradient."""
    return _EagerFunction.apply(x, layer.weight.detach(), layer.scale.detach(), layer._handle)  # type: ignore[no-any-return]


def identity_grad(layer: KasminaLayer, g: Tensor) -> None:
    """The backward of :func:`identity_forward`: adds ``Σ g²`` of ``g`` to the telemetry and
    leaves the gradient as it is (``dx = g``)."""
    g = g.contiguous()
    layer._core.identity_backward(g.data_ptr(), g.shape[0], DTYPE_CODES[g.dtype])


def kasmina_forward(x: Tensor, weight: Tensor, scale: Tensor, handle: int) -> Tensor:
    """The layer's forward: the custom op under ``torch.compile`` / ``torch.export``, the same
    computation through a plain ``autograd.Function`` (or directly, without gradients) in eager mode."""
    if torch.compiler.is_compiling():
        return forward_op(x, weight, scale, handle)
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad or scale.requires_grad):
        return _EagerFunction.apply(x, weight, scale, handle)  # type: ignore[no-any-return]
    return forward_impl(x, weight, scale, handle)
