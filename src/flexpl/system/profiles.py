"""Device and link cost profiles: pydantic models and the loader for ``profiles.yaml``.

All built-in numbers live in the packaged ``profiles.yaml`` (each one cited there). A
scenario names a profile (``rpi4``, ``wifi``, ...) or a path to a YAML file holding one
profile mapping (e.g. the output of ``flexpl calibrate``), optionally with inline
overrides of any field.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    NonNegativeFloat,
    PositiveFloat,
    ValidationError,
)

from flexpl.errors import UserError, one_line

__all__ = [
    "DeviceProfile",
    "LinkProfile",
    "device_profile",
    "link_profile",
    "load_profiles",
]

_PACKAGE = "flexpl.system"
_RESOURCE = "profiles.yaml"
_FILE_SUFFIXES = (".yaml", ".yml")


class DeviceProfile(BaseModel):
    """Compute, power and memory of one node.

    ``flops_per_s`` is the effective FP32 training throughput; ``joules_per_flop``
    overrides the energy per FLOP, otherwise it is ``active_power_w / flops_per_s``.
    """

    model_config = ConfigDict(extra="forbid")

    flops_per_s: PositiveFloat
    active_power_w: NonNegativeFloat = 0
    idle_power_w: NonNegativeFloat = 0
    joules_per_flop: NonNegativeFloat | None = None
    memory_bytes: PositiveFloat = 4e9

    def energy_per_flop(self) -> float:
        """Joules per FLOP: ``joules_per_flop`` if set, else ``active_power_w / flops_per_s``."""
        if self.joules_per_flop is not None:
            return float(self.joules_per_flop)
        return float(self.active_power_w) / float(self.flops_per_s)


class LinkProfile(BaseModel):
    """Bandwidth, one-way latency and per-bit energy of one link.

    "Up" is the direction from the link's first listed endpoint to its second (by
    convention the device / lower tier is listed first); "down" is the reverse.
    ``tx_j_per_bit`` is spent by the sender, ``rx_j_per_bit`` by the receiver.
    ``duplex``: ``full`` (each direction is its own resource on the clock: an upload and a
    download overlap) or ``half`` (one shared medium: they queue, first come first served).
    """

    model_config = ConfigDict(extra="forbid")

    bandwidth_up_bps: PositiveFloat
    bandwidth_down_bps: PositiveFloat
    latency_s: NonNegativeFloat = 0
    tx_j_per_bit: NonNegativeFloat = 0
    rx_j_per_bit: NonNegativeFloat = 0
    duplex: Literal["full", "half"] = "full"


_M = TypeVar("_M", DeviceProfile, LinkProfile)


# --------------------------------------------------------------------------- errors


def _what_is_allowed(model: type[BaseModel], err: Mapping[str, Any]) -> str:
    """Turn one pydantic error into a short 'what is allowed' phrase (for :func:`flexpl.errors.one_line`,
    which names each problem's field)."""
    kind = err.get("type", "")
    ctx = err.get("ctx") or {}
    if kind == "extra_forbidden":
        return f"unknown field; allowed fields: {', '.join(model.model_fields)}"
    if kind == "missing":
        return "is required"
    if kind == "greater_than":
        return f"must be a number > {ctx.get('gt', 0):g} (got {err.get('input')!r})"
    if kind == "greater_than_equal":
        return f"must be a number >= {ctx.get('ge', 0):g} (got {err.get('input')!r})"
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected', '')} (got {err.get('input')!r})"
    if kind.startswith("float") or kind.startswith("int"):
        return f"must be a number (got {err.get('input')!r})"
    return f"{err.get('msg', 'invalid value')} (got {err.get('input')!r})"


# --------------------------------------------------------------------------- loading


def _parse_profiles_doc(
    doc: Any, source: str
) -> tuple[dict[str, DeviceProfile], dict[str, LinkProfile]]:
    """Validate a parsed profiles document with top-level ``devices`` and ``links``."""
    if not isinstance(doc, dict):
        raise UserError(f"{source}: expected a mapping with 'devices' and 'links'")
    unknown = sorted(set(doc) - {"devices", "links"})
    if unknown:
        raise UserError(f"{source}: unknown top-level key {unknown[0]!r}; allowed: devices, links")
    out: list[dict[str, Any]] = []
    for section, model in (("devices", DeviceProfile), ("links", LinkProfile)):
        entries = doc.get(section) or {}
        if not isinstance(entries, dict):
            raise UserError(f"{source}: {section} must be a mapping of name -> profile")
        parsed: dict[str, Any] = {}
        for name, fields in entries.items():
            if not isinstance(fields, dict):
                raise UserError(f"{source}: {section}.{name} must be a mapping of fields")
            try:
                parsed[str(name)] = model.model_validate(fields)
            except ValidationError as exc:
                problems = one_line(exc, functools.partial(_what_is_allowed, model), f"{section}.{name}", every=True)
                raise UserError(f"{source}: {problems}") from None
        out.append(parsed)
    return out[0], out[1]


def _read_yaml(path: Path, what: str) -> Any:
    """Read a YAML file, turning I/O and syntax problems into one-line UserErrors."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{what}: file {str(path)!r} not found") from None
    except OSError as exc:
        raise UserError(f"{what}: cannot read {str(path)!r}: {exc.strerror or exc}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise UserError(f"{what}: {str(path)!r} is not valid YAML{at}") from None


@functools.lru_cache(maxsize=1)
def _load_builtin() -> tuple[dict[str, DeviceProfile], dict[str, LinkProfile]]:
    text = resources.files(_PACKAGE).joinpath(_RESOURCE).read_text(encoding="utf-8")
    return _parse_profiles_doc(yaml.safe_load(text), f"built-in {_RESOURCE}")


def load_profiles(
    path: str | Path | None = None,
) -> tuple[dict[str, DeviceProfile], dict[str, LinkProfile]]:
    """Load device and link profiles from ``path`` (default: the packaged profiles.yaml).

    Returns ``(devices, links)``, two dicts of name -> validated profile. The packaged
    file is parsed once and cached; callers get fresh copies they may modify.
    """
    if path is None:
        devices, links = _load_builtin()
    else:
        p = Path(path)
        devices, links = _parse_profiles_doc(_read_yaml(p, "profiles"), str(p))
    return (
        {k: v.model_copy() for k, v in devices.items()},
        {k: v.model_copy() for k, v in links.items()},
    )


# --------------------------------------------------------------------------- lookup


def _is_file_name(name: str) -> bool:
    return name.lower().endswith(_FILE_SUFFIXES)


def _resolve(
    name: Any,
    overrides: dict | None,
    field: str,
    model: type[_M],
    builtins: dict[str, _M],
    kind: str,
    base_dir: str | Path | None,
) -> _M:
    """Shared body of :func:`device_profile` and :func:`link_profile`."""
    if isinstance(name, Path):
        name = str(name)
    if not isinstance(name, str) or not name:
        raise UserError(
            f"{field}: expected a {kind} profile name or a .yaml file path "
            f"(got {name!r}); allowed names: {', '.join(builtins)}"
        )
    if _is_file_name(name):
        path = Path(name).expanduser()
        if not path.is_absolute() and base_dir is not None:
            path = Path(base_dir) / path
        doc = _read_yaml(path, field)
        if not isinstance(doc, dict):
            raise UserError(
                f"{field}: profile file {str(path)!r} must hold one {kind} profile mapping "
                f"with fields {', '.join(model.model_fields)}"
            )
        try:
            base = model.model_validate(doc)
        except ValidationError as exc:
            problems = one_line(exc, functools.partial(_what_is_allowed, model), every=True)
            raise UserError(f"{field}: profile file {str(path)!r}: {problems}") from None
    else:
        if name not in builtins:
            raise UserError(
                f"{field}: unknown {kind} profile {name!r}; allowed: "
                f"{', '.join(builtins)}, or a path to a .yaml file"
            )
        base = builtins[name]
    if not overrides:
        return base.model_copy()
    if not isinstance(overrides, dict):
        raise UserError(
            f"{field}: overrides must be a mapping of field -> value "
            f"(allowed fields: {', '.join(model.model_fields)})"
        )
    merged = base.model_dump()
    merged.update({str(k): v for k, v in overrides.items()})
    try:
        return model.model_validate(merged)
    except ValidationError as exc:
        raise UserError(one_line(exc, functools.partial(_what_is_allowed, model), field, every=True)) from None


def device_profile(
    name: str,
    overrides: dict | None = None,
    *,
    field: str = "profile",
    base_dir: str | Path | None = None,
) -> DeviceProfile:
    """Return the built-in device profile ``name`` with ``overrides`` applied.

    ``name`` may also be a path ending in .yaml/.yml holding one device profile mapping
    (relative paths resolve against ``base_dir`` if given, else the working directory).
    Problems raise :class:`~flexpl.errors.UserError` naming ``field`` (or ``field.<key>``).
    """
    devices, _ = _load_builtin()
    return _resolve(name, overrides, field, DeviceProfile, devices, "device", base_dir)


def link_profile(
    name: str,
    overrides: dict | None = None,
    *,
    field: str = "profile",
    base_dir: str | Path | None = None,
) -> LinkProfile:
    """Return the built-in link profile ``name`` with ``overrides`` applied.

    ``name`` may also be a path ending in .yaml/.yml holding one link profile mapping.
    Problems raise :class:`~flexpl.errors.UserError` naming ``field`` (or ``field.<key>``).
    """
    _, links = _load_builtin()
    return _resolve(name, overrides, field, LinkProfile, links, "link", base_dir)
