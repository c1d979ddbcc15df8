"""The base of every scenario section model: unknown fields are an error (a misspelt key never goes unnoticed).

Part of the scenario schema, :mod:`flexpl.config.scenario`.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")
