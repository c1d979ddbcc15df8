"""FlexPL: flexible parallel learning across devices, edge servers and the cloud.

Plans mix data parallelism (federated learning) and model parallelism (one model cut
across nodes); every run reports FLOPs, bytes per link, virtual time and energy.

The Python API (see the README, "Python API"): :func:`load_scenario`, :func:`simulate`,
:func:`predict`, :func:`compare`; :func:`register_model`, :func:`register_dataset`,
:func:`register_loss`, :func:`register_aggregator`; :class:`Aggregator` with
:class:`FedAvg`, :class:`FedProx`, :class:`FedAdam`. Names load on first use, so the
command line stays quick to start.
"""

from __future__ import annotations

import importlib
from typing import Any

from flexpl.version import __version__

_EXPORTS = {
    "load_scenario": "flexpl.api", "simulate": "flexpl.api", "predict": "flexpl.api", "compare": "flexpl.api",
    "Result": "flexpl.api", "Table": "flexpl.api", "table": "flexpl.api",
    "Scenario": "flexpl.config.scenario", "UserError": "flexpl.errors",
    "register_model": "flexpl.models", "from_sequential": "flexpl.models", "BlockModel": "flexpl.models",
    "register_dataset": "flexpl.data", "Dataset": "flexpl.data",
    "Aggregator": "flexpl.models.aggregate", "FedAvg": "flexpl.models.aggregate", "FedProx": "flexpl.models.aggregate",
    "FedAdam": "flexpl.models.aggregate", "register_aggregator": "flexpl.models.aggregate", "register_loss": "flexpl.models.aggregate",
    "fedavg": "flexpl.models.aggregate",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'flexpl' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
