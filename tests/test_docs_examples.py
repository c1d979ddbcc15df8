"""The documentation's examples run, so the docs cannot rot.

Every page of docs/ (and the README) is read in order, block by block:

- a ```bash block is run: each command (``\\`` continues a line, ``#`` starts a comment) must
  start with ``flexpl`` and runs as ``python -m flexpl.cli ...`` in the page's own temporary
  folder (the page's blocks share it, so a later block reads what an earlier one wrote);
- a ```python block is run with ``exec`` in that folder (the page's blocks share one namespace,
  ``__name__ == "__main__"``, and the folder is on ``sys.path`` so files the page wrote import);
- a block right after ``<!-- file: NAME -->`` is not run but written to NAME in the folder
  (a scenario YAML, a Python module) for the blocks after it;
- a block right after ``<!-- not tested: why -->`` is not run; its ``flexpl`` commands (also
  those after ``-m flexpl.cli`` in a torchrun line) are still parsed by the current argument
  parser, so a renamed flag or command fails here too;
- other blocks (text, yaml, json, console) are shown only.

The README is checked, not run: its tour repeats docs/getting-started.md (which runs), so its
flexpl commands are parsed and its Python compiled (tests/test_api.py runs its API example).

Pages are written for speed: digits-star, a round or two. The flexpl commands are forked from
one warm server (tests/forkserver.py --warm-up: the package imported and warmed up once, one torch
thread, as ``OMP_NUM_THREADS=1 flexpl ...``); ``FLEXPL_DOCS_SUBPROCESS=1`` runs each as a fresh
``python -m flexpl.cli`` process instead (slower, the same results).
"""

from __future__ import annotations

import contextlib
import csv
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.forkserver import ForkServer

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]
SKIP = re.compile(r"<!--\s*not tested:\s*(.+?)\s*-->\s*$")
FILE = re.compile(r"<!--\s*file:\s*(\S+)\s*-->\s*$")
FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)[^\n]*$")
COMMAND_TIMEOUT = 120


@dataclass
class Block:
    page: Path
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    mark: str = ""  # "", "skip" or "file"
    arg: str = ""  # the reason (skip) or the file name (file)

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks(page: Path) -> list[Block]:
    """The fenced blocks of a Markdown page, with the marker comment right before each (if any)."""
    lines = page.read_text().splitlines()
    out: list[Block] = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence, lang = m.group(1), m.group(2), m.group(3).lower()
        j = i + 1
        body = []
        while j < len(lines) and not (lines[j].strip().startswith(fence) and lines[j].strip().strip(fence[0]) == ""):
            body.append(lines[j][len(indent):] if lines[j].startswith(indent) else lines[j].lstrip())
            j += 1
        prev = next((lines[k] for k in range(i - 1, -1, -1) if lines[k].strip()), "")
        b = Block(page, i + 1, lang, "\n".join(body) + "\n")
        if s := SKIP.search(prev.strip()):
            b.mark, b.arg = "skip", s.group(1)
        elif f := FILE.search(prev.strip()):
            b.mark, b.arg = "file", f.group(1)
        out.append(b)
        i = j + 1
    return out


def commands(code: str) -> list[str]:
    """The shell commands of a bash block: continuations joined, comments and blank lines dropped."""
    out, cur = [], ""
    for raw in code.splitlines():
        line = raw.rstrip()
        if not cur and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.endswith("\\"):
            cur += line[:-1] + " "
            continue
        cur += line
        out.append(cur.strip())
        cur = ""
    if cur.strip():
        out.append(cur.strip())
    return out


def flexpl_argv(command: str) -> list[str] | None:
    """The arguments after ``flexpl`` (or ``-m flexpl.cli``) of one shell command, else None."""
    argv = shlex.split(command, comments=True)
    if argv and argv[0] == "flexpl":
        return argv[1:]
    for k in range(len(argv) - 1):
        if argv[k] == "-m" and argv[k + 1] == "flexpl.cli":
            return argv[k + 2:]
    return None


# ---------------------------------------------------------------- running flexpl


SERVER: ForkServer | None = None


def run_flexpl(argv: list[str], cwd: Path) -> tuple[int, str]:
    """Run ``flexpl ARGV`` in ``cwd``; (exit code, its stdout and stderr)."""
    if os.environ.get("FLEXPL_DOCS_SUBPROCESS") == "1":
        has_main = importlib.util.find_spec("flexpl.cli.__main__") is not None
        head = ["-m", "flexpl.cli"] if has_main else ["-c", "import sys; from flexpl.cli import main; sys.exit(main())"]
        pp = os.pathsep.join([str(cwd), str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])
        env = dict(os.environ, PYTHONPATH=pp, OMP_NUM_THREADS="1", MPLBACKEND="Agg")
        p = subprocess.run([sys.executable, *head, *argv], cwd=cwd, env=env, capture_output=True, text=True,
                           timeout=COMMAND_TIMEOUT)
        return p.returncode, p.stdout + p.stderr
    assert SERVER is not None
    return SERVER.run(argv, cwd, COMMAND_TIMEOUT)


@pytest.fixture(scope="module", autouse=True)
def fork_server():
    """Start the fork server before the first page, so its warm-up overlaps the pages' Python blocks."""
    global SERVER
    if os.environ.get("FLEXPL_DOCS_SUBPROCESS") != "1":
        SERVER = ForkServer(warm_up=True)  # it imports and warms up while the first pages' Python runs
    yield
    if SERVER is not None:
        SERVER.close()
        SERVER = None


def check_parses(argv: list[str], where: str) -> None:
    """A flexpl command that is not run still parses with the current CLI."""
    from flexpl.cli import build_parser
    from flexpl.errors import UserError

    try:
        build_parser().parse_args(argv)
    except (UserError, SystemExit) as exc:
        raise AssertionError(f"{where}: `flexpl {shlex.join(argv)}` no longer parses: {exc}") from None


# ---------------------------------------------------------------- the pages


@contextlib.contextmanager
def in_folder(path: Path):
    old_cwd, old_path = os.getcwd(), list(sys.path)
    os.chdir(path)
    sys.path.insert(0, str(path))
    try:
        yield
    finally:
        os.chdir(old_cwd)
        sys.path[:] = old_path


EXECUTED: list[tuple[str, str, float]] = []  # (where, kind, seconds): the summary at the end


def run_page(page: Path, folder: Path) -> None:
    ns: dict = {"__name__": "__main__"}
    check_only = page.name == "README.md"
    for b in blocks(page):
        if check_only and b.mark != "file":
            b.mark = "skip"
        if b.mark == "file":
            (folder / b.arg).parent.mkdir(parents=True, exist_ok=True)
            (folder / b.arg).write_text(b.code)
            continue
        if b.lang in ("bash", "sh", "shell"):
            cmds = commands(b.code)
            if b.mark == "skip":
                for c in cmds:
                    if (argv := flexpl_argv(c)) is not None:
                        check_parses(argv, b.where)
                continue
            t0 = time.perf_counter()
            for c in cmds:
                argv = flexpl_argv(c)
                assert argv is not None and c.startswith("flexpl"), (
                    f"{b.where}: a bash block runs only flexpl commands; mark it "
                    f"<!-- not tested: why --> to show `{c}`")
                rc, out = run_flexpl(argv, folder)
                assert rc == 0, f"{b.where}: `{c}` exited {rc}:\n{out[-3000:]}"
            EXECUTED.append((b.where, "bash", time.perf_counter() - t0))
        elif b.lang in ("python", "py", "pycon"):
            if b.mark == "skip":
                compile(b.code, b.where, "exec")  # at least it is Python
                continue
            t0 = time.perf_counter()
            with in_folder(folder):
                try:
                    exec(compile(b.code, b.where, "exec"), ns)
                except Exception as exc:
                    raise AssertionError(f"{b.where}: the python block failed: {exc!r}") from exc
            EXECUTED.append((b.where, "python", time.perf_counter() - t0))


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_page_examples_run(page: Path, tmp_path: Path) -> None:
    run_page(page, tmp_path)


def test_every_docs_page_has_tested_code_or_none():
    """No page hides all its shell examples behind markers, and markers stay rare."""
    docs = [p for p in PAGES if p.name != "README.md"]
    skipped = [b for p in docs for b in blocks(p) if b.mark == "skip"]
    runnable = [b for p in docs for b in blocks(p) if b.lang in ("bash", "python") and b.mark != "skip"]
    assert len(skipped) <= len(runnable) // 2, [b.where for b in skipped]
    for b in skipped:
        assert len(b.arg) > 8, f"{b.where}: say why the block is not tested"


def test_readme_keeps_the_setup_commands_and_the_api_example():
    text = (ROOT / "README.md").read_text()
    assert "make run" in text and "make test" in text  # CI greps for them
    api = text[text.index("## Python API"):]
    assert "```python" in api  # tests/test_api.py runs the first python block of this section
    assert (DOCS / "compare.png").exists() and "docs/compare.png" in text


def test_scenario_field_notes_name_fields_that_exist():
    """tools/scenario_fields.yaml (the reference page's notes) names only fields the schema has."""
    from flexpl.config.scenario import Scenario

    schema = Scenario.model_json_schema()
    defs = {"Scenario": schema, **schema.get("$defs", {})}
    notes = yaml.safe_load((ROOT / "tools" / "scenario_fields.yaml").read_text())
    stale = [k for k in notes if k.partition(".")[0] not in defs
             or ("." in k and k.partition(".")[2] not in defs[k.partition(".")[0]].get("properties", {}))]
    assert not stale, f"tools/scenario_fields.yaml: these fields are gone from the schema: {stale}"


def test_results_page_describes_every_column(tmp_path: Path):
    """Every field of summary.json and column of rounds.csv, timeline.csv, rounds_nodes.csv and rounds_links.csv
    a run writes is on the page."""
    import flexpl

    page = (DOCS / "reference" / "results.md").read_text()
    scn = flexpl.load_scenario("digits-star", overrides={"training.rounds": 1, "training.max_steps_per_round": 2,
                                                         "evaluation.targets": [0.5]})
    res = flexpl.simulate(scn, out=tmp_path / "run")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    names = set(summary) | {f"per_node.{k}" for n in summary["per_node"].values() for k in n}
    names |= {f"per_link.{k}" for n in summary.get("per_link", {}).values() for k in n}
    for f in ("rounds.csv", "timeline.csv", "rounds_nodes.csv", "rounds_links.csv"):
        with open(tmp_path / "run" / f) as fh:
            names |= set(next(csv.reader(fh)))
    from flexpl.planner import CSV_COLUMNS

    names |= set(CSV_COLUMNS)
    missing = sorted(n for n in names if f"`{n.rpartition('.')[2]}`" not in page)
    assert not missing, f"docs/reference/results.md does not describe: {missing}"
    assert res.summary["bytes_total"] > 0


def _cpu_seconds() -> float:
    """CPU seconds of this process, and of the fork server with the commands it forked and reaped."""
    t = os.times()
    return t.user + t.system + (SERVER.cpu_seconds() if SERVER is not None else t.children_user + t.children_system)


def test_zz_summary(capsys):
    """Print what ran, how long and how much CPU (pytest -s shows it); runs last by name."""
    total = sum(t for _, _, t in EXECUTED)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    with capsys.disabled():
        print(f"\ndocs examples: {len(EXECUTED)} blocks executed "
              f"({sum(k == 'bash' for _, k, _ in EXECUTED)} bash, {sum(k == 'python' for _, k, _ in EXECUTED)} "
              f"python) in {total:.1f} s; {_cpu_seconds():.1f} CPU s in all; load average {load:.1f}")
        if os.environ.get("FLEXPL_DOCS_TIMES"):
            for where, kind, t in sorted(EXECUTED, key=lambda e: -e[2]):
                print(f"  {t:6.1f} s  {kind:6s} {where}")
