"""Griffe extension for the API reference: the package's reST-flavoured docstrings read as Markdown.

The docstrings use Sphinx roles (``:func:`simulate```, ``:class:`~flexpl.api.Result```) and
doctest examples (``>>> ...``); Markdown would show the roles raw and the prompts as nested
quotes. This rewrites, for the rendered page only, each role to a code span (the last dotted
part after ``~``) and each run of ``>>>`` lines, with the output under it, to a ``pycon``
block. The source is left as it is.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(?:func|class|meth|mod|data|attr|exc|obj|const):`(~?)([^`]+)`")


def _role(m: re.Match[str]) -> str:
    target = m.group(2)
    if m.group(1):
        target = target.rsplit(".", 1)[-1]
    return f"`{target}`"


def markdown(text: str) -> str:
    text = ROLE.sub(_role, text)
    out: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.lstrip().startswith(">>>"):
            indent = line[: len(line) - len(line.lstrip())]
            block = []
            while i < len(lines) and lines[i].strip():
                block.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i].strip())
                i += 1
            if out and out[-1].strip():
                out.append("")
            out += [f"{indent}```pycon", *(indent + b for b in block), f"{indent}```"]
            continue
        out.append(line)
        i += 1
    return "\n".join(out)


class SphinxRolesToMarkdown(griffe.Extension):
    """Rewrite every loaded object's docstring (see the module docstring)."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = markdown(obj.docstring.value)
