"""The docs' request examples are all marked and all run: every block of README.md and docs/api.md
that sends a request names its profile (for readers and in a marker), each profile is one that a
test module serves and runs the examples of, and the checks those modules run catch a doc whose
answer has drifted. The examples themselves run in the server modules (tests/support/doc_examples.py)."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from tests.support import doc_examples
from tests.support.doc_examples import ROOT, Example, key_differences, sample_json


def test_every_request_example_names_its_profile():
    assert doc_examples.unmarked() == []
    examples = doc_examples.examples()
    assert len(examples) >= 10
    hidden = [str(e) for e in examples if not doc_examples.shows_profile(e)]
    assert hidden == [], "say the profile above the block: On `make serve PROFILE=...`:"
    silent = [str(e) for e in examples if e.language == "python" and not doc_examples.PRINTED.search(e.code)]
    assert silent == [], "a Python example shows what it prints: print(...)  # value"


def test_every_profile_named_is_served_by_a_module_that_runs_its_examples():
    profiles = {e.profile for e in doc_examples.examples()}
    assert profiles <= set(yaml.safe_load((ROOT / "models/registry.yaml").read_text())["profiles"]), profiles
    for profile in profiles:
        module = (ROOT / doc_examples.MODULES[profile]).read_text()
        assert f'doc_examples.examples("{profile}")' in module, (profile, doc_examples.MODULES[profile])


def test_sample_answers_parse_with_their_elisions():
    for example in doc_examples.examples():
        if example.answer is not None and " -i " not in example.code:
            assert sample_json(example.answer) is not None, str(example)
    elided = '{"data": [{"embedding": [[0.1, 0.2, ...], ...]}, ...]}'
    assert sample_json(elided) == {"data": [{"embedding": [[0.1, 0.2]]}]}


@pytest.mark.parametrize(
    "sample, real, differences",
    [
        ({"a": 1, "b": [{"c": 2}]}, {"a": 5, "b": [{"c": 3}, {"c": 4, "d": 1}]}, []),
        ({"a": 1}, {"a": 1, "variants": []}, [".variants: not in the doc"]),
        ({"data": [{"id": "x", "pooling": "mean"}]}, {"data": [{"id": "x"}]}, [".data[0].pooling: only in the doc"]),
        ({"data": [{}, {}]}, {"data": [{}]}, [".data: a list of 2+ items in the doc, not in the answer"]),
        ({"error": {"code": "x"}}, {"error": "x"}, [".error: an object in the doc, str in the answer"]),
    ],
)
def test_key_differences_name_each_drift(sample, real, differences):
    assert key_differences(sample, real) == differences


def test_a_drifted_answer_or_a_failed_request_fails_the_check(tmp_path):
    """No server: a curl example whose request cannot connect fails, and so does a Python example
    whose printed value is not the one its comment documents."""
    refused = Example("doc.md", 1, "curl", "curl -s localhost:3000/v1/models", "cpu", 200, None, "")
    with pytest.raises(AssertionError, match="rc 7"):
        doc_examples.check(refused, "http://127.0.0.1:9")
    printed = Example("doc.md", 1, "python", "print(2 + 2)  # 5", "cpu", 200, None, "")
    with pytest.raises(AssertionError):
        doc_examples.check(printed, "http://127.0.0.1:9")
    doc_examples.check(dataclasses.replace(printed, code="print(2 + 2)  # 4"), "http://127.0.0.1:9")
