"""Sticky assignment of callers to variants: one hash per request, the same on every replica, and
when the weights change only the share of callers that has to move moves.

A caller (the OpenAI ``user`` field) is a point in ``[0, SPACE)``: the first 4 bytes of its
BLAKE2b hash, keyed by the served name (so the experiments of two models split callers
independently), read big-endian. BLAKE2b is the same in every process, replica and Python
version, where ``hash()`` is salted per process.

A ``Layout`` cuts ``[0, SPACE)`` into segments, each owned by a variant; a caller goes to the
owner of its point (a bisect over a few segment ends). ``from_weights`` lays the variants out in
order, each over its share. ``rebalance`` changes a layout to new weights by moving as little as
possible: each variant whose share shrinks gives up the top of its segments, and the freed pieces
go to the variants whose share grows, in order. So exactly the sum of the shrinking shares moves,
always to a variant that grew, and every other caller keeps its variant. The layout, not only the
weights, is what the replicas share (``gateway/routing.py``), so they all agree after any history
of changes.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

SPACE = 2**32


def seed(model: str) -> Any:
    """The hasher of ``model``'s callers (copied per caller: no key schedule per request)."""
    return hashlib.blake2b(digest_size=4, key=hashlib.blake2b(model.encode()).digest()[:32])


def point(model_seed: Any, user: str) -> int:
    """Where ``user`` falls in ``[0, SPACE)`` for the model whose ``seed`` this is."""
    hasher = model_seed.copy()
    hasher.update(user.encode())
    return int.from_bytes(hasher.digest(), "big")


def shares(weights: Mapping[str, float]) -> dict[str, int]:
    """Integer shares of ``SPACE`` proportional to ``weights`` (summing to ``SPACE``; the largest
    remainders round up, ties in order). ``ValueError`` when the weights add up to 0."""
    total = sum(weights.values())
    if total <= 0:
        raise ValueError("the weights add up to 0")
    exact = {name: SPACE * weight / total for name, weight in weights.items()}
    result = {name: int(value) for name, value in exact.items()}
    short = SPACE - sum(result.values())
    for name in sorted(exact, key=lambda n: result[n] - exact[n])[:short]:
        result[name] += 1
    return result


def in_shares(layout: Layout, weights: Mapping[str, float]) -> bool:
    """Whether ``layout`` gives each variant its share of ``weights`` (adding up to more than 0), to
    within the one unit of ``SPACE`` that rounding moves (``shares`` breaks ties in the weights'
    order, so another order gives another layout just as right); a variant without weight holds
    nothing."""
    total = sum(weights.values())
    held = layout.share()
    return set(held) <= set(weights) and all(
        abs(held.get(name, 0) - SPACE * weight / total) < 1 for name, weight in weights.items())


@dataclass(frozen=True)
class Layout:
    """Segments ``[ends[i-1], ends[i])`` of ``[0, SPACE)`` (``ends`` increasing, the last one
    ``SPACE``), ``owners[i]`` owning segment ``i``; neighbours have different owners."""

    ends: tuple[int, ...]
    owners: tuple[str, ...]

    def owner(self, where: int) -> str:
        return self.owners[bisect.bisect_right(self.ends, where)]

    def segments(self) -> list[tuple[int, int, str]]:
        return [(start, end, owner) for start, end, owner in zip((0, *self.ends), self.ends, self.owners, strict=False)]

    def share(self) -> dict[str, int]:
        """How much of ``SPACE`` each owner holds."""
        held: dict[str, int] = {}
        for start, end, owner in self.segments():
            held[owner] = held.get(owner, 0) + end - start
        return held

    def to_json(self) -> list[list]:
        return [[end, owner] for end, owner in zip(self.ends, self.owners, strict=True)]

    @classmethod
    def from_json(cls, data: Any, names: Sequence[str]) -> Layout:
        """The layout ``to_json`` wrote (pairs as lists or tuples); ``ValueError`` unless it covers the
        space with owners from ``names``."""
        if not isinstance(data, list) or not data or not all(isinstance(s, list | tuple) and len(s) == 2 for s in data):
            raise ValueError("a layout is a non-empty list of [end, variant] pairs")
        ends, owners = tuple(s[0] for s in data), tuple(s[1] for s in data)
        if not all(type(e) is int for e in ends) or list(ends) != sorted(set(ends)) or ends[0] <= 0 \
                or ends[-1] != SPACE:
            raise ValueError(f"a layout's ends increase from above 0 to {SPACE}")
        if not all(type(o) is str for o in owners):
            raise ValueError("a layout's owners are variant names")
        if unknown := sorted(set(owners) - set(names)):
            raise ValueError(f"the layout names variants that are not loaded: {', '.join(unknown)}")
        return _merged([(start, end, owner) for start, end, owner in zip((0, *ends), ends, owners, strict=False)])


def _merged(segments: list[tuple[int, int, str]]) -> Layout:
    """The layout of non-empty ``segments`` (in order, covering the space), neighbours of one owner joined."""
    ends: list[int] = []
    owners: list[str] = []
    for start, end, owner in segments:
        if end <= start:
            continue
        if owners and owners[-1] == owner:
            ends[-1] = end
        else:
            ends.append(end)
            owners.append(owner)
    return Layout(tuple(ends), tuple(owners))


def from_weights(weights: Mapping[str, float]) -> Layout:
    """Each variant over its share, in ``weights``' order."""
    segments, start = [], 0
    for name, size in shares(weights).items():
        segments.append((start, start + size, name))
        start += size
    return _merged(segments)


def rebalance(layout: Layout, weights: Mapping[str, float]) -> Layout:
    """``layout`` changed to ``weights``' shares, moving the fewest callers: shrinking variants
    give up the top of their segments (highest first), growing ones take the freed pieces
    (lowest first), in ``weights``' order. A variant missing from ``weights`` keeps none."""
    want = shares(weights)
    excess = {owner: held - want.get(owner, 0) for owner, held in layout.share().items()}
    kept, freed = [], []
    for start, end, owner in reversed(layout.segments()):
        cut = min(max(excess.get(owner, 0), 0), end - start)
        excess[owner] = excess.get(owner, 0) - cut
        if cut:
            freed.append((end - cut, end))
        kept.append((start, end - cut, owner))
    held = layout.share()
    need = {name: size - held.get(name, 0) for name, size in want.items() if size > held.get(name, 0)}
    given = []
    growers = iter(need.items())
    name, missing = next(growers, (None, 0))
    for start, end in sorted(freed):
        while start < end and name is not None:
            take = min(missing, end - start)
            given.append((start, start + take, name))
            start, missing = start + take, missing - take
            if missing == 0:
                name, missing = next(growers, (None, 0))
    return _merged(sorted(kept + given))
