"""A FlexPL process does without ``torch._dynamo``: 2-4 s less per process.

[Note: a process without dynamo] Many torch functions FlexPL calls (an optimizer's
``add_param_group``, FlopCounterMode's dispatch handler, the decompositions it counts
through) are wrapped in torch's ``_disable_dynamo``, which imports ``torch._dynamo`` on each
wrapped function's first call, only to hide that function from ``torch.compile``. The
import takes 2-4 s on a 2-core machine (a third of a small run's wall, paid again by
every process a test or a sweep starts). FlexPL compiles nothing, so there is nothing to
hide: when the ``flexpl`` command starts, and in the Ray actors and task workers that run
FlexPL's work (not when flexpl is imported as a library), :func:`spare_dynamo` puts a stand-in under the name ``torch._dynamo`` whose ``disable``
returns the function itself (which the wrapper caches). Anything else asked of the
stand-in (code in the process that really uses dynamo) removes it and imports the real
module, so such code runs as usual; only the functions already called stay un-hidden
from ``torch.compile`` in that process.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable
from typing import Any

NAME = "torch._dynamo"


class _StandIn(types.ModuleType):
    """What ``import torch._dynamo`` finds in a ``flexpl`` process until something really needs dynamo."""

    @staticmethod
    def disable(fn: Callable[..., Any] | None = None, recursive: bool = True, **kwargs: Any) -> Callable[..., Any]:
        """``torch._dynamo.disable`` where nothing is compiled: the function itself (or, as ``disable(recursive=...)``,
        a decorator returning it)."""
        return fn if fn is not None else (lambda f: f)

    @staticmethod
    def graph_break(*args: Any, **kwargs: Any) -> None:
        """``torch._dynamo.graph_break`` outside a compiled region (an optimizer step calls it): nothing."""

    @staticmethod
    def is_compiling() -> bool:
        """Nothing is being compiled."""
        return False

    def __getattr__(self, name: str) -> Any:
        import importlib

        if name.startswith("__"):
            raise AttributeError(name)
        restore()
        return getattr(importlib.import_module(NAME), name)


def spare_dynamo() -> bool:
    """Install the stand-in unless dynamo is loaded already; True if installed (see the module note)."""
    if NAME in sys.modules:
        return False
    import importlib.util

    spec = importlib.util.find_spec(NAME)  # imports torch, not dynamo
    stand_in = _StandIn(NAME)
    if spec is not None and spec.submodule_search_locations:  # its submodules (dynamo's config...) import as usual
        stand_in.__path__ = list(spec.submodule_search_locations)
    sys.modules[NAME] = stand_in
    return True


def restore() -> None:
    """Remove the stand-in (if it is there), so that the next ``import torch._dynamo`` loads the real module."""
    mod = sys.modules.get(NAME)
    if isinstance(mod, _StandIn):
        del sys.modules[NAME]
        torch = sys.modules.get("torch")
        if torch is not None and isinstance(torch.__dict__.get("_dynamo"), _StandIn):
            del torch.__dict__["_dynamo"]
