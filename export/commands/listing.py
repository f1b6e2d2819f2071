"""``python -m export list``: the store's entries, which registry models pin them and as which
served name/variant a profile serves them."""

from __future__ import annotations

import argparse
import json
import sys

from export import store


def list_entries(as_json: bool, profile: str | None) -> int:
    """Every store entry, by store name, with its content digest, provenance, parity and quality
    figures, which registry models pin it and as which served name/variant the profile serves it;
    then the profile's models that the store lacks. ``as_json``: one JSON array of entries."""
    from export.pins import describe
    from models.registry import RegistryError, load_registry, served
    from models.store import StoreError, content_digest, entry_content, store_model

    try:
        registry, selection = load_registry(), served(profile)
    except RegistryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    serving: dict[str, list[str]] = {}  # tag -> served name/variant
    lacking = []
    for route in selection.routes.values():
        for variant in route.variants:
            try:
                tag = str(store_model(variant.spec).tag)
            except StoreError:
                lacking.append(variant.spec)
                continue
            serving.setdefault(tag, []).append(f"{route.model}/{variant.name}")
    rows = []
    for model in store.entries():
        digest = content_digest(entry_content(model))
        rows.append({
            "tag": str(model.tag),
            "path": model.path,
            "created": model.info.creation_time.isoformat(),
            "content_digest": digest,
            "pinned_by": sorted(s.name for s in registry.models.values() if s.pin and s.pin.digest == digest
                                and s.store_name == model.tag.name),
            "served_as": serving.get(str(model.tag), []),
            "labels": dict(model.info.labels),
            "metadata": {k: v for k, v in dict(model.info.metadata).items() if k != "content"},
        })
    if as_json:
        print(json.dumps(rows, indent=2, default=str))
        return 0
    if not rows:
        print("the model store is empty")
    name = None
    for row in rows:
        if row["tag"].split(":")[0] != name:
            name = row["tag"].split(":")[0]
            print(name)
        marks = [f"pinned by {', '.join(row['pinned_by'])}"] if row["pinned_by"] else []
        marks += [f"served ({selection.profile}) as {', '.join(row['served_as'])}"] if row["served_as"] else []
        print(f"  {row['tag'].split(':')[1]}  {row['created'][:19]}  {row['content_digest'][:19]}...  "
              f"{'; '.join(marks) or '-'}")
        print(f"      {describe(row['metadata'])}")
    for spec in {spec.name: spec for spec in lacking}.values():  # a model may serve several variants
        state = f"pinned to {spec.pin.digest[:19]}..." if spec.pin else "unpinned"
        print(f"missing: {spec.name} ({state}) is served in {selection.profile} but the store lacks it: "
              "`python -m export ensure`")
    for spec in selection.units:
        if spec.pin is None:
            print(f"unpinned: {spec.name} serves the latest {spec.store_tag}; `python -m export pin` pins it")
    return 0


def run(args: argparse.Namespace) -> int:
    return list_entries(args.json, args.profile)
