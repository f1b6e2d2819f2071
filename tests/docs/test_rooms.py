"""The rooms of the code import downwards only (docs/rooms.py reads every import of the project's own
modules from the syntax tree, module level and inside functions): no room without a floor, no
import from a floor to its own or a higher one, ``core`` (the wire format, the error table, the page
geometry, the settings) importing nothing of the project; and the rooms picture in
docs/architecture.md is the one the code draws today."""

import html
import re

from docs import rooms


def test_core_imports_nothing_of_the_project():
    found = rooms.rooms()
    assert found["core"], "core/ holds no Python code"
    assert [key for key in rooms.imports(found) if key[0] == "core"] == []


def test_every_room_has_a_floor_and_imports_only_lower_floors():
    assert rooms.problems() == []


def test_the_rules_catch_an_upward_import(tmp_path, monkeypatch):
    """The same reading on a made-up tree: a model room importing the gateway is named, with its file."""
    for room, code in {"core": "", "models": "import gateway.app\n", "gateway": "from models import x\n"}.items():
        (tmp_path / room).mkdir()
        (tmp_path / room / "__init__.py").write_text(code)
    monkeypatch.setattr(rooms, "ROOT", tmp_path)
    monkeypatch.setattr(rooms, "FLOORS", [("core",), ("models",), ("gateway",)])
    assert rooms.problems() == ["models/__init__.py (models, floor 1) imports gateway (floor 2)"]


def test_the_rooms_picture_is_drawn_from_the_code_of_today():
    """docs/rooms.dot is what ``python docs/rooms.py --dot`` writes now (sizes and arrows included), and
    docs/img/rooms.svg was rendered from it (dot writes each node and edge as a <title>)."""
    assert (rooms.ROOT / "docs/rooms.dot").read_text() == rooms.dot(), "run `make docs-architecture`"
    source = rooms.dot()
    nodes = set(re.findall(r"^    (\w+) \[label=", source, re.M))
    edges = {f"{a}->{b}" for a, b in re.findall(r"^    (\w+) -> (\w+) \[label=", source, re.M)}
    svg = (rooms.ROOT / "docs/img/rooms.svg").read_text()
    titles = {html.unescape(title) for title in re.findall(r"<title>([^<]*)</title>", svg)}
    assert nodes and nodes <= titles and edges <= titles
    assert "](img/rooms.svg)" in (rooms.ROOT / "docs/architecture.md").read_text()
