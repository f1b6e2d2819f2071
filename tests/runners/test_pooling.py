"""Pooling (runners/pooling.py) and the ORT engine's token-budget sub-batches (runners/ort/engine.py),
without a session."""

import numpy as np

from models.schema import Pooling
from runners.ort.engine import token_budget_batches
from runners.pooling import normalize, pool


def test_pooling_modes_respect_the_mask():
    hidden = np.arange(2 * 3 * 2, dtype=np.float32).reshape(2, 3, 2)
    right = np.array([[1, 1, 0], [1, 1, 1]])
    left = np.array([[0, 1, 1], [1, 1, 1]])
    np.testing.assert_allclose(pool(hidden, right, Pooling.MEAN), [[1, 2], [8, 9]])
    np.testing.assert_allclose(pool(hidden, right, Pooling.CLS), [[0, 1], [6, 7]])
    np.testing.assert_allclose(pool(hidden, right, Pooling.LAST), [[2, 3], [10, 11]])
    np.testing.assert_allclose(pool(hidden, left, Pooling.LAST), [[4, 5], [10, 11]])
    unit = normalize(np.array([[3.0, 4.0], [0.0, 0.0]]))
    np.testing.assert_allclose(unit, [[0.6, 0.8], [0.0, 0.0]])


def test_token_budget_batches_sort_and_bound_padding():
    lengths = [5, 1, 100, 3, 5, 2]
    batches = token_budget_batches(lengths, 12, None, 32)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for batch in batches:
        longest = max(lengths[i] for i in batch)
        assert len(batch) * longest <= 12 or len(batch) == 1
    assert batches[-1] == [2]  # the over-long input runs alone
    assert [lengths[i] for i in batches[0]] == [1, 2, 3]


def test_token_budget_batches_do_not_pad_short_inputs_to_long_ones():
    lengths = [256, 8, 250, 9, 240, 10, 8, 12]
    batches = token_budget_batches(lengths, 16384, None, 32)
    assert [sorted(lengths[i] for i in b) for b in batches] == [[8, 8, 9, 10, 12], [240, 250, 256]]
    assert token_budget_batches([128] * 8, 16384, None, 32) == [list(range(8))]  # equal: one call


def test_token_budget_batches_are_the_cheapest_grouping():
    """Against every contiguous grouping of the sorted lengths (brute force): no other grouping
    within the bounds has fewer padded tokens plus the cost of its calls."""
    import itertools
    import random

    def cost(groups, call_cost):
        return sum(call_cost + len(g) * max(g) for g in groups)

    rng = random.Random(7)
    for _ in range(200):
        lengths = [rng.choice([rng.randint(1, 16), rng.randint(8, 300)]) for _ in range(rng.randint(1, 8))]
        budget, max_rows, call_cost = rng.choice([64, 512, 4096]), rng.choice([None, 2, 3]), rng.choice([0, 32, 500])
        ours = [[lengths[i] for i in b] for b in token_budget_batches(lengths, budget, max_rows, call_cost)]
        ordered = sorted(lengths)
        assert sorted(x for g in ours for x in g) == ordered
        assert all(_fits(g, budget, max_rows) for g in ours)
        best = min(
            cost(groups, call_cost)
            for cuts in itertools.product([False, True], repeat=len(ordered) - 1)
            for groups in [_split(ordered, cuts)]
            if all(_fits(g, budget, max_rows) for g in groups)
        )
        assert cost(ours, call_cost) == best, (lengths, budget, max_rows, call_cost, ours)


def _fits(group: list[int], budget: int, max_rows: int | None) -> bool:
    """Within the token budget (or alone) and the row limit."""
    return (len(group) == 1 or len(group) * max(group) <= budget) and (max_rows is None or len(group) <= max_rows)


def _split(values: list[int], cuts: tuple[bool, ...]) -> list[list[int]]:
    groups = [[values[0]]]
    for value, cut in zip(values[1:], cuts, strict=True):
        groups.append([value]) if cut else groups[-1].append(value)
    return groups
