"""Where the simulator computes: ``engine.device`` and ``training.precision``.

The device only decides where tensors live and run; the bill (FLOPs, bytes, clock, energy)
is read from shapes and never depends on it. ``bf16`` runs each stage's forward under
``torch.autocast`` and casts what leaves a stage back to fp32, so weights and activations
travel (and are billed) at fp32 width. Evaluation may run convolutional paths in channels-last memory
format (``engine.eval_memory_format``): the same arithmetic in another layout, to float round-off.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable, Iterator

import torch
from torch import nn

from flexpl.errors import UserError

DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def resolve_device(spec: str) -> torch.device:
    """``auto | cpu | cuda | cuda:N`` as a torch device; ``auto`` is CUDA when there is one, else the CPU.

    Raises a one-line :class:`UserError` for a malformed string, CUDA without CUDA, or a CUDA
    index past the last device.
    """
    if not DEVICE_PATTERN.match(spec):
        raise UserError(f"engine.device: '{spec}' is not a device; use auto, cpu, cuda or cuda:N")
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise UserError(f"engine.device: '{spec}' asks for CUDA but this torch sees no CUDA device; "
                        "use engine.device=cpu (or auto)")
    dev = torch.device(spec)
    if dev.index is not None and dev.index >= torch.cuda.device_count():
        raise UserError(f"engine.device: '{spec}' but this machine has {torch.cuda.device_count()} CUDA device(s); "
                        f"use cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    return dev


def bf16_supported(device: torch.device) -> bool:
    """Whether bf16 autocast computes natively on ``device``."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    try:  # CPU: oneDNN's bf16 kernels need AVX512-BF16 / AMX (or at least AVX512 for emulation)
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def check_precision(precision: str, device: torch.device) -> None:
    """One-line :class:`UserError` where ``training.precision: bf16`` is not supported on ``device``."""
    if precision == "bf16" and not bf16_supported(device):
        raise UserError(f"training.precision: bf16 autocast is not supported on this {device.type.upper()} "
                        "(no native bf16 kernels); use training.precision=fp32")


@contextlib.contextmanager
def compute(device: torch.device, precision: str) -> Iterator[None]:
    """The context a stage's forward runs in: ``torch.autocast`` to bf16 where asked, else nothing."""
    if precision == "bf16":
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
            yield
    else:
        yield


def eval_channels_last(spec: str, device: torch.device) -> bool:
    """Whether evaluation runs convolutional paths in channels-last memory format: ``engine.eval_memory_format``
    (``auto``: on the CPU, where oneDNN's channels-last convolutions measured faster; see
    benchmarks/channels_last.py)."""
    return spec == "channels_last" or (spec == "auto" and device.type == "cpu")


def train_channels_last(model: nn.Module, input_shape: tuple[int, ...]) -> bool:
    """Put ``model``'s 4-D weights in channels-last memory format for training (``engine.train_memory_format:
    channels_last``), so that every replica, arena row and global copy made from it keeps that layout and
    its convolutions run channels-last. True if it has a 2-D convolution (else nothing changes).

    A copy first runs a forward and backward pass on two zero samples in eval mode (no batch-norm
    statistics or random numbers used): a model that ``.view()``s a convolution's output, which a
    channels-last tensor does not allow, is a one-line ``UserError`` here rather than a traceback later.
    """
    import copy

    if not any(isinstance(x, nn.Conv2d) for x in model.modules()):
        return False
    model.to(memory_format=torch.channels_last)
    probe = copy.deepcopy(model).eval()
    dev = next((p.device for p in probe.parameters()), torch.device("cpu"))
    try:
        probe(torch.zeros((2, *input_shape), device=dev)).float().sum().backward()
    except RuntimeError as exc:
        if "view" not in str(exc):
            raise
        raise UserError("engine.train_memory_format: the model reshapes an activation with .view(), which "
                        "channels-last memory format does not allow; use .reshape() or "
                        "engine.train_memory_format=contiguous") from None
    return True


@contextlib.contextmanager
def channels_last(modules: Iterable[nn.Module]) -> Iterator[bool]:
    """For the duration, the 4-D weights of ``modules`` in channels-last memory format (yields whether any
    has a 2-D convolution; without one nothing changes). The same values in another layout, and the original
    tensors are put back after, so training never sees it (call outside ``torch.inference_mode``)."""
    mods = list(modules)
    if not any(isinstance(x, nn.Conv2d) for m in mods for x in m.modules()):
        yield False
        return
    swapped = []
    for m in mods:
        for p in m.parameters():
            if p.dim() == 4 and not p.is_contiguous(memory_format=torch.channels_last):
                swapped.append((p, p.data))
                p.data = p.data.contiguous(memory_format=torch.channels_last)
    try:
        yield True
    finally:
        for p, data in swapped:
            p.data = data


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``t`` on ``device`` (asynchronous from pinned memory on CUDA); the same tensor where it already is."""
    if t.device == device or t.is_meta:
        return t
    return t.to(device, non_blocking=t.is_pinned())


def take(src: torch.Tensor, rows: torch.Tensor, device: torch.device | None = None) -> torch.Tensor:
    """``src[rows]`` (rows along dimension 0) on ``device`` (None: where ``src`` is).

    From the CPU to CUDA the rows are gathered straight into pinned (page-locked) host memory and
    copied asynchronously, as a ``DataLoader`` with ``pin_memory=True`` does but without its second
    copy; torch's pinned-memory cache keeps the buffer until the copy has finished.
    """
    if device is None or device.type != "cuda" or src.device.type != "cpu":
        return to_device(src[rows], device) if device is not None else src[rows]
    rows = rows.to(torch.int64)
    out = torch.empty((int(rows.shape[0]), *src.shape[1:]), dtype=src.dtype, pin_memory=True)
    torch.index_select(src, 0, rows, out=out)
    return out.to(device, non_blocking=True)
