"""How tensors cross node boundaries. The only thing that differs between backends.

Every crossing is recorded in the round's trace (bytes routed hop by hop over the
topology), whichever backend moves it, so accounted bytes never depend on the backend.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch

from flexpl.costs.trace import Event, Recorder


def tensor_bytes(t: torch.Tensor) -> int:
    """Bytes a tensor occupies on the wire: ``numel x element_size``."""
    return t.numel() * t.element_size()


class SimTransport:
    """In-process transport: tensors stay where they are; each crossing is recorded."""

    zero_copy = True  # what arrives is the very tensor sent (the engine may then copy in bulk)

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder

    def move(self, t: torch.Tensor, src: str, dst: str, what: str, deps: Iterable[Event],
             label: str = "") -> tuple[torch.Tensor, Event]:
        """Send ``t`` from ``src`` to ``dst`` (nothing if equal); returns it and the arrival event."""
        return t, self.recorder.transfer(src, dst, tensor_bytes(t), deps, what, label)

    def move_state(self, state: Mapping[str, torch.Tensor], src: str, dst: str, what: str,
                   deps: Iterable[Event], label: str = "") -> tuple[dict[str, torch.Tensor], Event]:
        """Send a whole state dict (parameters and buffers) as one message."""
        nbytes = sum(tensor_bytes(v) for v in state.values())
        return dict(state), self.recorder.transfer(src, dst, nbytes, deps, what, label)
