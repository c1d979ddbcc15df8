"""``flexpl calibrate``: measure this machine's FLOP/s (and power, memory) into a device profile YAML.

How it measures is :mod:`flexpl.costs.calibrate`.
"""

from __future__ import annotations

import argparse
import platform
from pathlib import Path

from flexpl.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profile-name", default=None, metavar="NAME",
                        help="name of the profile (default: this host's name)")
    parser.add_argument("--out", default=None, metavar="FILE",
                        help="YAML file to write (default: NAME.yaml in the current folder)")
    parser.add_argument("--repeats", type=int, default=20, metavar="N",
                        help="timed repetitions per model; the median counts (default 20)")
    parser.add_argument("--batch-size", type=int, default=32, metavar="B", help="batch size (default 32)")
    parser.add_argument("--threads", type=int, default=None, metavar="T",
                        help="torch intra-op threads while timing (default: torch's own choice); match how "
                             "runs use the machine, e.g. 1 per worker of `flexpl sweep --jobs`")
    parser.add_argument("--active-power-w", type=float, default=None, metavar="W",
                        help="power under load if RAPL cannot be read (default: assume 65 W)")
    parser.add_argument("--idle-power-w", type=float, default=None, metavar="W",
                        help="idle power if RAPL cannot be read (default: assume 10 W)")
    parser.add_argument("--quiet", action="store_true", help="print nothing but errors")


def main(args: argparse.Namespace) -> int:
    """flexpl calibrate: time the zoo on this machine, write a device profile YAML, print a summary."""
    from flexpl.costs.calibrate import calibrate, save_profile

    if args.repeats < 1:
        raise UserError(f"--repeats: must be a positive integer, got {args.repeats}")
    if args.batch_size < 1:
        raise UserError(f"--batch-size: must be a positive integer, got {args.batch_size}")
    if args.threads is not None and args.threads < 1:
        raise UserError(f"--threads: must be a positive integer, got {args.threads}")
    for flag, v in (("--active-power-w", args.active_power_w), ("--idle-power-w", args.idle_power_w)):
        if v is not None and not v >= 0:
            raise UserError(f"{flag}: must be a number >= 0, got {v}")
    name = args.profile_name or (platform.node() or "this-machine")
    out = Path(args.out or f"{name}.yaml")
    if out.is_dir():
        raise UserError(f"--out: '{out}' is a folder; give a file name such as {out / (name + '.yaml')}")
    if not out.name.lower().endswith((".yaml", ".yml")):
        raise UserError(f"--out: '{out}' must end in .yaml or .yml (scenarios load profiles from such files)")
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    fields, results, how = calibrate(args.repeats, args.batch_size, args.active_power_w, args.idle_power_w)
    save_profile(out, name, fields, results, how, args.batch_size)
    if not args.quiet:
        for r in results:
            print(f"{r['model']:7s} {r['flops']:.3e} FLOPs  {r['median_s'] * 1e3:8.3f} ms  {r['flops_per_s']:.3e} FLOP/s")
        print(f"{name}: {fields['flops_per_s']:.3e} FLOP/s, {fields['active_power_w']:.3g} W active, "
              f"{fields['memory_bytes']:.3e} bytes -> {out}")
    return 0
