"""The code's rooms and floors, read from its imports: docs/rooms.dot (the picture in
docs/architecture.md) and the rule that no room imports from a floor above its own.

A room is a top-level package or module of the repository (tests/ and docs/ are not rooms).
``FLOORS`` lists them bottom up; a room may import from rooms on lower floors only. Every
top-level ``import``/``from ... import`` of the project's own rooms counts, wherever it sits in
a file (a deferred import inside a function is still a dependency).

    python docs/rooms.py --check   # exit 1 naming each upward import or room without a floor
    python docs/rooms.py --dot     # write docs/rooms.dot (make docs-architecture renders it)
"""

from __future__ import annotations

import argparse
import ast
import sys
import textwrap
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOT = ROOT / "docs" / "rooms.dot"
NOT_ROOMS = {"tests", "docs"}

# Bottom up. What each room holds is its package docstring; the picture shows it too.
FLOORS: list[tuple[str, ...]] = [
    ("core", "corpora"),
    ("models", "images"),
    ("hosting",),
    ("runners",),
    ("gateway", "export"),
    ("service", "deploy"),
    ("bench",),
]


def rooms() -> dict[str, list[Path]]:
    """Room name -> its Python files (sorted); only rooms holding Python code."""
    found: dict[str, list[Path]] = {}
    for path in sorted(ROOT.iterdir()):
        if path.name.startswith(".") or path.name in NOT_ROOMS:
            continue
        if path.is_file() and path.suffix == ".py":
            found[path.stem] = [path]
        elif path.is_dir():
            files = sorted(p for p in path.rglob("*.py") if not any(part.startswith(".") for part in p.parts))
            if files:
                found[path.name] = files
    return found


def role(files: list[Path]) -> str:
    """The first sentence of the room's docstring (its package ``__init__.py`` or its module); '' if none."""
    init = [path for path in files if path.name == "__init__.py" and len(path.relative_to(ROOT).parts) == 2]
    docstring = ast.get_docstring(ast.parse((init or files)[0].read_text())) if init or len(files) == 1 else None
    return (docstring or "").split("\n\n")[0].replace("\n", " ").split(": ")[0].split(". ")[0].rstrip(".")


def imports(found: dict[str, list[Path]]) -> Counter[tuple[str, str, str]]:
    """(from room, to room, file) -> how many import statements, for imports between rooms."""
    counted: Counter[tuple[str, str, str]] = Counter()
    for room, files in found.items():
        for path in files:
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    target = name.split(".")[0]
                    if target in found and target != room:
                        counted[room, target, str(path.relative_to(ROOT))] += 1
    return counted


def problems() -> list[str]:
    """Each room without a floor, each floor naming no room, and each import from a lower floor up."""
    found = rooms()
    floor = {room: level for level, names in enumerate(FLOORS) for room in names}
    wrong = [f"room {room}/ has no floor in docs/rooms.py FLOORS" for room in found if room not in floor]
    wrong += [f"FLOORS names {room}, which holds no Python code" for room in floor if room not in found]
    for (source, target, path), _ in sorted(imports(found).items()):
        if source in floor and target in floor and floor[target] >= floor[source]:
            wrong.append(f"{path} ({source}, floor {floor[source]}) imports {target} (floor {floor[target]})")
    return wrong


def dot() -> str:
    """The picture: one row per floor (floor 0 at the bottom), one box per room with its size,
    one arrow per pair of rooms labelled with how many import statements it stands for."""
    found = rooms()
    edges: Counter[tuple[str, str]] = Counter()
    for (source, target, _), count in imports(found).items():
        edges[source, target] += count
    lines = [
        "// The code's rooms and floors, drawn from its imports by `python docs/rooms.py --dot`",
        "// (make docs-architecture). Do not edit by hand: tests/docs/test_rooms.py compares it with the code.",
        "digraph rooms {",
        '    graph [rankdir=TB, fontname="Helvetica", fontsize=10, nodesep=0.3, ranksep=0.35, pad=0.2,',
        '           label="Rooms (top-level packages and modules), top floor first; an arrow is an import'
        ' (the number: import statements). No arrow points up.", labelloc=b];',
        '    node [shape=box, style="rounded,filled", fillcolor="#ffffff", color="#555555", fontname="Helvetica",'
        " fontsize=10];",
        '    edge [fontname="Helvetica", fontsize=8, color="#888888"];',
    ]
    for level, names in enumerate(FLOORS):
        members = " ".join(f"{name};" for name in names if name in found)
        lines.append(f"    {{ rank=same; floor{level} [shape=plaintext, label=\"floor {level}\"]; {members} }}")
        if level:
            lines.append(f"    floor{level} -> floor{level - 1} [style=invis];")
    for room, files in found.items():
        size = sum(len(path.read_text().splitlines()) for path in files)
        kind = "/" if len(files) > 1 or files[0].name == "__init__.py" else ".py"
        what = "\\n".join(textwrap.wrap(role(files).replace('"', "'").replace("`", ""), 34))
        count = f"{len(files)} file{'s' * (len(files) > 1)}, {size:,} lines"
        label = "\\n".join(part for part in (f"{room}{kind}", what, count) if part)
        lines.append(f'    {room} [label="{label}"];')
    for (source, target), count in sorted(edges.items()):
        lines.append(f'    {source} -> {target} [label="{count}"];')
    lines.append("}")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="fail on an upward import or a room without a floor")
    parser.add_argument("--dot", action="store_true", help=f"write {DOT.relative_to(ROOT)}")
    args = parser.parse_args()
    if args.dot:
        DOT.write_text(dot())
        print(f"wrote {DOT.relative_to(ROOT)}")
    wrong = problems()
    for line in wrong:
        print(line, file=sys.stderr)
    return 1 if wrong and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
