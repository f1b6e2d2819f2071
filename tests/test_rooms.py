"""The rooms of the code import downwards only (issue 22): every import of a project module, read from
the source's syntax tree (module level and inside functions), goes to the same room or to a lower
floor. ``core`` (the gateway<->runner wire format, the error table, the page geometry) is the
lowest: it imports nothing of the project but itself."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Lower floors first; rooms on one floor do not import each other.
FLOORS = [{"core"}, {"models", "images"}, {"hosting"}, {"runners"}, {"gateway", "export"}, {"service", "deploy"},
          {"bench"}]
FLOOR = {room: level for level, rooms in enumerate(FLOORS) for room in rooms}


def room_imports(room: str) -> list[tuple[str, str]]:
    """(``file:line``, imported top-level room) for every project import in ``room``'s files."""
    files = [ROOT / f"{room}.py"] if (ROOT / f"{room}.py").is_file() else sorted((ROOT / room).rglob("*.py"))
    found = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            found += [(f"{path.relative_to(ROOT)}:{node.lineno}", name.split(".")[0]) for name in names]
    return [(where, target) for where, target in found if target in FLOOR or (ROOT / target).is_dir()]


def test_core_imports_nothing_of_the_project():
    assert [(where, target) for where, target in room_imports("core") if target != "core"] == []


@pytest.mark.parametrize("room", sorted(FLOOR))
def test_a_room_imports_only_its_own_floor_or_lower_rooms(room):
    upward = [(where, target) for where, target in room_imports(room)
              if target != room and FLOOR.get(target, -1) >= FLOOR[room]]
    assert upward == [], f"{room} (floor {FLOOR[room]}) imports a room on its floor or above"
