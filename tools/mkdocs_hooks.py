"""MkDocs hook: the reference pages generated from the code at build time.

Every page here is made from what the package is now, so a renamed or split module cannot
leave a stale page behind (nor break ``mkdocs build --strict``):

- ``reference/cli.md``: every ``flexpl`` command, walked from ``flexpl.cli.build_parser()``
  (its subparsers, the lazily registered ones included, recursively);
- ``reference/scenario.md``: the scenario schema from pydantic's JSON schema of
  ``flexpl.config.scenario.Scenario``, each field described by the comment beside it in the
  source;
- ``reference/profiles.md``: the devices and links of the packaged ``profiles.yaml``, found
  by walking the package, with each value's cited source;
- ``reference/api.md``: ``flexpl.api`` and every public name of ``flexpl`` (its lazy
  ``_EXPORTS`` table), rendered by mkdocstrings;
- ``reference/modules.md``: every package and module under ``src/flexpl`` (walked, read
  with ``ast``, never imported) with its summary, and which packages each package imports.

``reference/results.md`` is written by hand; the hook fills its ``<!-- flexpl:columns -->``
marker with the column lists the code defines.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import io
import json
import os
import re
import sys
import tokenize
import typing
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
PKG = SRC / "flexpl"
if str(SRC) not in sys.path:  # the working tree's package, whatever is installed
    sys.path.insert(0, str(SRC))

# The intended layers, bottom to top (docs/architecture.md); packages not listed go on top.
LAYERS = ["errors", "io", "config", "system", "models", "data", "plan", "costs", "sim", "dist",
          "planner", "studies", "report", "scenarios", "api", "cli"]

GENERATED = "<!-- generated at build time by tools/mkdocs_hooks.py: edit the code, not this page -->\n\n"


# --------------------------------------------------------------------------- mkdocs events


def on_files(files, config, **_):
    from mkdocs.structure.files import File

    for uri, make in (("reference/cli.md", cli_page), ("reference/scenario.md", scenario_page),
                      ("reference/profiles.md", profiles_page), ("reference/api.md", api_page),
                      ("reference/modules.md", modules_page)):
        old = files.get_file_from_path(uri)
        if old is not None:  # a hand-written copy would go stale: the generated page wins
            files.remove(old)
        files.append(File.generated(config, uri, content=GENERATED + make()))
    return files


def on_page_markdown(markdown, page, config, files, **_):
    if "<!-- flexpl:columns -->" in markdown:
        markdown = markdown.replace("<!-- flexpl:columns -->", columns_section())
    return markdown


# --------------------------------------------------------------------------- helpers


def _esc(text: Any) -> str:
    """A table cell: one line, pipes escaped; ``<``, ``>``, ``*`` and braces escaped outside code spans."""
    parts = re.split(r"(`[^`]*`)", " ".join(str(text).split()))
    out = [p if p.startswith("`") else p.replace("<", "&lt;").replace(">", "&gt;").replace("*", "\\*")
           .replace("{", "\\{").replace("}", "\\}") for p in parts]
    return "".join(out).replace("|", "\\|")


def _code(text: Any) -> str:
    s = str(text)
    if "`" in s:
        return f"`` {s} ``"
    return f"`{s}`"


# --------------------------------------------------------------------------- CLI


def _subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, argparse.ArgumentParser, str]]:
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            for name, sub in action.choices.items():
                out.append((name, sub, helps.get(name, "")))
    return out


def _walk(parser: argparse.ArgumentParser, prefix: str = ""):
    """(full command, parser, help) for every subcommand, depth first, in the parser's order."""
    for name, sub, helptext in _subcommands(parser):
        full = f"{prefix} {name}".strip()
        yield full, sub, helptext
        yield from _walk(sub, full)


def _arguments_table(parser: argparse.ArgumentParser) -> str:
    fmt = parser._get_formatter()
    rows = []
    for a in parser._actions:
        if isinstance(a, argparse._SubParsersAction) or a.help == argparse.SUPPRESS:
            continue
        if a.option_strings:
            name = ", ".join(a.option_strings)
            if a.nargs != 0:
                metavar = fmt._format_args(a, a.metavar or a.dest.upper())
                name += f" {metavar}"
        else:
            name = fmt._format_args(a, a.metavar or a.dest)
        helptext = fmt._expand_help(a) if a.help else ""
        default = a.default
        if a.nargs == 0 or default in (None, [], argparse.SUPPRESS) or isinstance(a, argparse._HelpAction):
            default_s = ""
        else:
            default_s = _code(default)
        rows.append(f"| {_code(name)} | {_esc(helptext)} | {default_s} |")
    if not rows:
        return ""
    return "| argument | meaning | default |\n|---|---|---|\n" + "\n".join(rows) + "\n"


def cli_page() -> str:
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "78"  # argparse wraps usage lines to the terminal: the same width on every machine
    try:
        return _cli_page()
    finally:
        if old is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = old


def _cli_page() -> str:
    from flexpl.cli import build_parser

    parser = build_parser()
    parser.prog = "flexpl"
    commands = list(_walk(parser))
    lines = ["# Command line\n",
             "Every `flexpl` command and its arguments, walked from the argument parser the command "
             "line itself uses (`flexpl.cli.build_parser()`), so this page always matches "
             "`flexpl <command> --help`. Concepts and "
             "examples: [getting started](../getting-started.md) and the guides.\n",
             "Exit codes: 0 success; 2 a user error (one line on stderr naming the field or "
             "flag); 3 a run that diverged or a distributed worker that failed (the rounds so far "
             "are kept); 130 interrupted.\n",
             "| command | what it does |", "|---|---|"]
    for full, _sub, helptext in commands:
        anchor = re.sub(r"[^a-z0-9]+", "-", f"flexpl {full}".lower()).strip("-")
        lines.append(f"| [`flexpl {full}`](#{anchor}) | {_esc(helptext)} |")
    lines.append("")
    lines.append("## `flexpl`\n")
    lines.append(f"```text\n{parser.format_usage().strip()}\n```\n")
    lines.append(_arguments_table(parser))
    for full, sub, helptext in commands:
        lines.append(f"## `flexpl {full}` {{#{re.sub(r'[^a-z0-9]+', '-', f'flexpl {full}'.lower()).strip('-')}}}\n")
        if helptext:
            lines.append(f"{helptext[0].upper()}{helptext[1:]}.\n")
        if sub.description:
            lines.append(sub.description.strip() + "\n")
        usage = sub.format_usage().strip()
        lines.append(f"```text\n{usage}\n```\n")
        lines.append(_arguments_table(sub))
    return "\n".join(lines)


# --------------------------------------------------------------------------- scenario schema


def _models_in(annotation: Any, seen: dict[str, type]) -> None:
    from pydantic import BaseModel

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        if annotation.__name__ not in seen:
            seen[annotation.__name__] = annotation
            for f in annotation.model_fields.values():
                _models_in(f.annotation, seen)
        return
    for arg in typing.get_args(annotation):
        _models_in(arg, seen)


def _field_comments(cls: type) -> dict[str, str]:
    """Field name -> the comment beside it (same line) or the comment lines right above it."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    import textwrap

    source = textwrap.dedent(source)
    comments: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
    lines = source.splitlines()
    tree = ast.parse(source)
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    out: dict[str, str] = {}
    prev_end = tree.body[0].lineno if body else 0
    for stmt in body:
        if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
            above = []
            ln = stmt.lineno - 1
            while ln > prev_end and ln in comments and lines[ln - 1].strip().startswith("#"):
                above.insert(0, comments[ln])
                ln -= 1
            beside = [comments[n] for n in range(stmt.lineno, (stmt.end_lineno or stmt.lineno) + 1)
                      if n in comments and not lines[n - 1].strip().startswith("#")]
            text = " ".join(above + beside).strip()
            if text:
                out[stmt.target.id] = text
        prev_end = stmt.end_lineno or stmt.lineno
    return out


def _type(schema: dict[str, Any]) -> str:
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return f"[{name}](#{name.lower()})"
    if "anyOf" in schema:
        return " or ".join(_type(s) for s in schema["anyOf"])
    if "enum" in schema:
        return " \\| ".join(_code(json.dumps(v)) for v in schema["enum"])
    if "const" in schema:
        return _code(json.dumps(schema["const"]))
    t = schema.get("type", "any")
    if t == "array":
        return f"list of {_type(schema.get('items', {}))}"
    if t == "object" and "additionalProperties" in schema and isinstance(schema["additionalProperties"], dict):
        return f"mapping to {_type(schema['additionalProperties'])}"
    if t == "object":
        return "mapping"
    return "null" if t == "null" else t


def _limits(schema: dict[str, Any]) -> str:
    marks = {"minimum": ">=", "exclusiveMinimum": ">", "maximum": "<=", "exclusiveMaximum": "<",
             "minLength": "length >=", "minItems": "items >="}
    parts = [f"{m} {schema[k]}" for k, m in marks.items() if k in schema]
    for s in schema.get("anyOf", []):
        parts += [f"{m} {s[k]}" for k, m in marks.items() if k in s]
    return ", ".join(parts)


FIELD_NOTES = ROOT / "tools" / "scenario_fields.yaml"


def field_notes() -> dict[str, str]:
    """tools/scenario_fields.yaml: what a field means where its source has no comment."""
    import yaml

    return {str(k): str(v) for k, v in (yaml.safe_load(FIELD_NOTES.read_text()) or {}).items()}


def _paths(schema: dict[str, Any]) -> dict[str, str]:
    """Each definition's place in a scenario, e.g. PartitionCfg -> ``data.partition``, breadth first."""
    defs = schema.get("$defs", {})
    paths = {"Scenario": ""}
    todo = [("Scenario", schema)]
    while todo:
        name, node = todo.pop(0)
        for field, fs in node.get("properties", {}).items():
            base = f"{paths[name]}.{field}".lstrip(".")
            for ref, suffix in _refs(fs):
                if ref not in paths:
                    paths[ref] = base + suffix
                    todo.append((ref, defs.get(ref, {})))
    return paths


def _refs(fs: dict[str, Any], suffix: str = "") -> list[tuple[str, str]]:
    if "$ref" in fs:
        return [(fs["$ref"].rsplit("/", 1)[-1], suffix)]
    out = []
    for s in fs.get("anyOf", []):
        out += _refs(s, suffix)
    if "items" in fs:
        out += _refs(fs["items"], suffix + "[]")
    if isinstance(fs.get("additionalProperties"), dict):
        out += _refs(fs["additionalProperties"], suffix + ".<name>")
    return out


def scenario_page() -> str:
    from flexpl.config.scenario import Scenario

    schema = Scenario.model_json_schema()
    defs = schema.get("$defs", {})
    classes: dict[str, type] = {}
    _models_in(Scenario, classes)
    paths = _paths(schema)
    order = list(paths) + [d for d in defs if d not in paths]
    notes = field_notes()
    lines = ["# Scenario schema\n",
             "Every field a scenario YAML (or the dict given to `flexpl.load_scenario`) may hold, "
             "generated from the pydantic models that validate it (`flexpl.config.scenario.Scenario`). "
             "Unknown fields are an error: a misspelt key stops at load time with one line naming it "
             "(exit 2). `--set a.b.c=value` changes one field from the command line. How the "
             "pieces fit: [Scenarios](../concepts/scenarios.md).\n",
             "| section | model |", "|---|---|"]
    for name in order:
        where = paths.get(name)
        label = "(top level)" if name == "Scenario" else f"`{where}`" if where else name
        lines.append(f"| [{label}](#{name.lower()}) | {name} |")
    lines.append("")
    model_opts = _model_options()
    for name in order:
        node = schema if name == "Scenario" else defs[name]
        cls = classes.get(name)
        comments = _field_comments(cls) if cls is not None else {}
        where = paths.get(name)
        title = "The top level" if name == "Scenario" else f"`{where}`" if where else name
        lines.append(f"## {title} {{#{name.lower()}}}\n")
        desc = node.get("description") or (inspect.getdoc(cls) if cls else "")
        if desc:
            lines.append(f"*{name}*: " + " ".join(desc.split()) + "\n")
        required = set(node.get("required", []))
        lines.append("| field | type | default | limits | meaning |\n|---|---|---|---|---|")
        for field, fs in node.get("properties", {}).items():
            default = "required" if field in required else (_code(json.dumps(fs["default"])) if "default" in fs else "")
            meaning = fs.get("description") or comments.get(field) or notes.get(f"{name}.{field}", "")
            lines.append(f"| `{field}` | {_type(fs)} | {default} | {_limits(fs)} | {_esc(meaning)} |")
        lines.append("")
        if name in notes:
            lines.append(notes[name] + "\n")
        if name == "Scenario" and model_opts:
            lines.append(model_opts)
    lines.append("## The JSON schema\n")
    lines.append("The whole schema as pydantic writes it (`Scenario.model_json_schema()`), for editors "
                 "and validators:\n")
    lines.append('??? note "scenario.schema.json"\n')
    lines.append("    ```json")
    lines.extend("    " + ln for ln in json.dumps(schema, indent=2).splitlines())
    lines.append("    ```\n")
    return "\n".join(lines)


def _model_options() -> str:
    """The options each zoo model takes under ``model: {name: ..., ...}``, if the schema names them."""
    try:
        from flexpl.config import scenario as sc
    except ImportError:
        return ""
    table = getattr(sc, "MODEL_OPTIONS", None)
    if not table:
        return ""
    rows = ["### `model:` options\n",
            "`model` is a zoo name (`model: cnn`) or a mapping with `name` and that model's options "
            "(`model: {name: mlp, hidden: [64, 32]}`), or `{factory: \"module:function\"}` for your "
            "own. The options the schema checks:\n",
            "| model | options |", "|---|---|"]
    for name, opts in table.items():
        fields = ", ".join(f"`{f}` ({_type(s)})" for f, s in opts.model_json_schema().get("properties", {}).items())
        rows.append(f"| `{name}` | {fields or 'none'} |")
    return "\n".join(rows) + "\n"


# --------------------------------------------------------------------------- profiles.yaml


def _profiles_file() -> Path:
    found = sorted(PKG.rglob("profiles.yaml"))
    if not found:
        raise RuntimeError("no profiles.yaml under src/flexpl")
    return found[0]


def _yaml_comments(text: str) -> tuple[str, dict[tuple[str, str, str], str], dict[tuple[str, str], str],
                                        dict[str, str]]:
    """The file's header comment, {(section, name, field): comment}, {(section, name): comment} and
    {section: the comment lines between the section's key and its first entry}."""
    header, values, titles, notes = [], {}, {}, {}
    section = name = None
    started = False
    for line in text.splitlines():
        if not started:
            if line.startswith("#"):
                header.append(line.lstrip("#").strip())
                continue
            if line.strip():
                started = True
        m = re.match(r"^(\w+):\s*$", line)
        if m:
            section, name = m.group(1), None
            continue
        if section and name is None and line.strip().startswith("#"):
            notes[section] = (notes.get(section, "") + " " + line.strip().lstrip("#").strip()).strip()
            continue
        m = re.match(r"^  ([\w.-]+):(.*?)(#(.*))?$", line)
        if m and section:
            name = m.group(1)
            if m.group(4):
                titles[(section, name)] = m.group(4).strip()
            continue
        m = re.match(r"^    ([\w.-]+):\s*([^#]*?)\s*(#\s*(.*))?$", line)
        if m and section and name:
            values[(section, name, m.group(1))] = (m.group(4) or "").strip()
    return "\n".join(header), values, titles, notes


def _num(v: Any, unit: str = "") -> str:
    if v is None:
        return "derived"
    if isinstance(v, float) and (abs(v) >= 1e5 or (v and abs(v) < 1e-2)):
        s = f"{v:.3g}"
    else:
        s = f"{v:g}" if isinstance(v, float) else str(v)
    return f"{s}{unit}"


def profiles_page() -> str:
    import yaml

    path = _profiles_file()
    text = path.read_text()
    data = yaml.safe_load(text)
    header, comments, titles, notes = _yaml_comments(text)
    rel = path.relative_to(ROOT)
    lines = ["# Device and link profiles\n",
             f"The built-in profiles, read from `{rel}` (the one data file for all of them). A node "
             "names a device profile (`profile: rpi4`), a link a link profile (`profile: wifi`); any "
             "field can be overridden inline on the node or link, and `profile: my-board.yaml` reads a "
             "file written by `flexpl calibrate`. How the values enter the bill: "
             "[The bill](../concepts/bill.md).\n",
             "## Devices\n",
             *([_esc(notes["devices"]) + "\n"] if notes.get("devices") else []),
             "| profile | what it is | FLOP/s | active W | idle W | J/FLOP | memory bytes |",
             "|---|---|---|---|---|---|---|"]
    devices = data.get("devices", {})
    for name, d in devices.items():
        jpf = d.get("joules_per_flop")
        if jpf is None and d.get("flops_per_s"):
            jpf_s = f"{d.get('active_power_w', 0) / d['flops_per_s']:.3g} (derived)"
        else:
            jpf_s = _num(jpf)
        title = titles.get(("devices", name), "")
        lines.append(f"| `{name}` | {_esc(title)} | {_num(d.get('flops_per_s'))} | {_num(d.get('active_power_w'))} "
                     f"| {_num(d.get('idle_power_w'))} | {jpf_s} | {_num(d.get('memory_bytes'))} |")
    lines += ["", "## Links\n",
              "Up is from the link's first listed endpoint to its second (by convention the device or "
              "lower tier first); latency is one way.\n",
              *([_esc(notes["links"]) + "\n"] if notes.get("links") else []),
              "| profile | up bit/s | down bit/s | latency s | tx J/bit | rx J/bit | duplex |",
              "|---|---|---|---|---|---|---|"]
    links = data.get("links", {})
    for name, d in links.items():
        lines.append(f"| `{name}` | {_num(d.get('bandwidth_up_bps'))} | {_num(d.get('bandwidth_down_bps'))} "
                     f"| {_num(d.get('latency_s'))} | {_num(d.get('tx_j_per_bit'))} | {_num(d.get('rx_j_per_bit'))} "
                     f"| {d.get('duplex', 'full')} |")
    lines += ["", "## Where every number comes from\n",
              "The comment beside each value in the file, as written there. The status letters:\n",
              "```text", header, "```", ""]
    for section, table in (("devices", devices), ("links", links)):
        for name in table:
            entries = [(f, v) for (s, n, f), v in comments.items() if s == section and n == name]
            title = titles.get((section, name), "")
            lines.append(f"### `{name}`\n")
            if title:
                lines.append(f"{_esc(title)}\n")
            if not entries:
                continue
            lines.append("| field | value | source |\n|---|---|---|")
            for f, c in entries:
                lines.append(f"| `{f}` | {_num(table[name].get(f))} | {_esc(c)} |")
            lines.append("")
    return "\n".join(lines)


# --------------------------------------------------------------------------- Python API


def _defined_in(module: str, name: str) -> str:
    """Where ``module.name`` is defined (its ``__module__``), so a re-export or a moved module still renders."""
    import importlib

    try:
        obj = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return module
    home = getattr(obj, "__module__", None)
    if isinstance(home, str) and home.startswith("flexpl") and getattr(obj, "__qualname__", name) == name:
        return home
    return module


def api_page() -> str:
    import flexpl

    exports: dict[str, str] = {n: _defined_in(m, n) for n, m in getattr(flexpl, "_EXPORTS", {}).items()}
    by_module: dict[str, list[str]] = defaultdict(list)
    for name, module in exports.items():
        by_module[module].append(name)
    lines = ["# Python API\n",
             "Everything the command line does is a function. `import flexpl` is quick: the names "
             "below load on first use. How to use them: [Python API guide](../guides/python-api.md) "
             "and [Bring your own model, data, loss, aggregator](../guides/extending.md).\n",
             "## Public names of `flexpl`\n",
             "| name | defined in |", "|---|---|"]
    for name, module in exports.items():
        lines.append(f"| [`flexpl.{name}`](#{module}.{name}) | `{module}` |")
    lines.append("")
    api = "flexpl.api"
    lines.append(f"## `{api}`\n")
    lines.append(f"::: {api}\n    options:\n      show_root_heading: false\n      show_root_toc_entry: false\n")
    for module, names in by_module.items():
        if module == api:
            continue
        lines.append(f"## From `{module}`\n")
        for name in names:
            lines.append(f"::: {module}.{name}\n    options:\n      show_root_heading: true\n      heading_level: 3\n")
    return "\n".join(lines)


# --------------------------------------------------------------------------- modules


def _summary(path: Path) -> str:
    try:
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    except SyntaxError:
        return ""
    first = doc.strip().split("\n\n")[0]
    return " ".join(first.split())


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _package_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "flexpl"


def _imports(path: Path, module: str, known: set[str]) -> set[str]:
    pkg = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                head = pkg.split(".")[:len(pkg.split(".")) - node.level + 1]
                base = ".".join(head + ([node.module] if node.module else []))
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
    return {m for m in found if m in known and m != module}


def _rank(package: str) -> int:
    return LAYERS.index(package) if package in LAYERS else len(LAYERS)


def modules_page() -> str:
    files = sorted(PKG.rglob("*.py"))
    modules = {_module_name(p): p for p in files}
    deps: dict[str, set[str]] = defaultdict(set)
    for name, path in modules.items():
        for m in _imports(path, name, set(modules)):
            a, b = _package_of(name), _package_of(m)
            if a != b and b != "flexpl":
                deps[a].add(b)
    packages = sorted({_package_of(m) for m in modules if m != "flexpl"}, key=lambda p: (_rank(p), p))
    lines = ["# Packages and modules\n",
             "Every package and module of `src/flexpl`, walked when the site is built, with the first "
             "paragraph of its docstring. How they fit together: [Architecture](../architecture.md).\n",
             "## Which package imports which\n",
             "Read from the import statements (those inside functions too). The order is the intended "
             "layering, bottom to top; an import of a package further up the list is marked *(up)*: most "
             "are lazy imports inside a function, kept there so that the lower package loads alone.\n",
             "| package | imports |", "|---|---|"]
    for p in packages:
        names = sorted(deps.get(p, ()), key=lambda q: (_rank(q), q))
        cells = [f"{q} *(up)*" if _rank(q) > _rank(p) else q for q in names]
        lines.append(f"| `{p}` | {', '.join(cells) or '–'} |")
    lines.append("")
    by_pkg: dict[str, list[str]] = defaultdict(list)
    for m in modules:
        by_pkg[_package_of(m)].append(m)
    for p in ["flexpl", *packages]:
        lines.append(f"## `{'flexpl' if p == 'flexpl' else 'flexpl.' + p}`\n")
        lines.append("| module | what it holds |\n|---|---|")
        for m in sorted(by_pkg[p]):
            lines.append(f"| `{m}` | {_esc(_summary(modules[m]))} |")
        lines.append("")
    data_files = sorted(f for f in PKG.rglob("*") if f.suffix in (".yaml", ".yml") and f.is_file())
    if data_files:
        lines.append("## Data files\n")
        lines.append("| file | first line |\n|---|---|")
        for f in data_files:
            first = next((ln.lstrip("# ").strip() for ln in f.read_text().splitlines() if ln.strip()), "")
            lines.append(f"| `{f.relative_to(SRC)}` | {_esc(first)} |")
        lines.append("")
    return "\n".join(lines)


# --------------------------------------------------------------------------- results columns


def _lookup(candidates: list[str]) -> Any:
    """The first ``module:attribute`` of ``candidates`` that imports (None if none does)."""
    import importlib

    for c in candidates:
        module, _, attr = c.partition(":")
        try:
            value = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError):
            continue
        return c, value
    return None, None


def columns_section() -> str:
    spec = [
        ("The summary columns the run, compare and sweep tables print (in this order)",
         ["flexpl.io.results:SUMMARY_COLUMNS", "flexpl.io:SUMMARY_COLUMNS"]),
        ("The files a new run replaces in its folder", ["flexpl.io.results:RUN_FILES", "flexpl.io:RUN_FILES"]),
        ("plans.csv, in order (`flexpl plan`)", ["flexpl.planner:CSV_COLUMNS"]),
        ("plans.csv columns a `--constraint` may compare with a number", ["flexpl.planner:NUMERIC_COLUMNS"]),
        ("plans.csv columns a `--constraint` may name alone (true/false)", ["flexpl.planner:BOOL_COLUMNS"]),
        ("The rounds `Result.table()` shows by default (Python API)", ["flexpl.api:DEFAULT_COLUMNS"]),
    ]
    out = ["## Column lists from the code\n",
           "Read from the package when this site was built (tools/mkdocs_hooks.py):\n"]
    for title, candidates in spec:
        where, value = _lookup(candidates)
        if value is None:
            continue
        module, _, attr = where.partition(":")
        out.append(f"**{title}** (`{module}.{attr}`):\n")
        out.append(", ".join(f"`{v}`" for v in value) + "\n")
    return "\n".join(out)


if __name__ == "__main__":  # print one page: python tools/mkdocs_hooks.py cli|scenario|profiles|api|modules
    page = {"cli": cli_page, "scenario": scenario_page, "profiles": profiles_page, "api": api_page,
            "modules": modules_page, "columns": columns_section}[sys.argv[1]]
    sys.stdout.write(page())
