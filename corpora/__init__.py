"""The project's text sets: one room that export/ (int8 calibration, the quality gate) and bench/
(load texts) both read, so neither reaches into the other for data.

Every file is JSONL (one JSON object per line), written by ``python -m corpora.make``
(deterministic: a seeded generator and the running Python 3.11's standard-library docstrings;
re-run only to change them). No personal data anywhere.

- ``SAMPLE_QUERIES`` (2,560 rows, 2.1 MB): ``{"set": S, "text": T, "tokens": N}``, the benchmark's
  load texts (``bench/``); ``N`` counts all-MiniLM-L6-v2's tokens with [CLS]/[SEP], before
  truncation at 256. 512 texts in each set: ``query`` (short questions, 6-20 tokens),
  ``p32``/``p128``/``p512`` (passages of exactly 32/128/512 tokens), ``mixed`` (8-256 tokens).
- ``RETRIEVAL`` (2,500 rows, 1.0 MB): the int8 quality gate's labelled retrieval set
  (``export/quality.py``): 2,000 ``{"kind": "doc", "id", "source", "text"}`` passages
  (standard-library docstrings after their first paragraph) and 500 ``{"kind": "query", "id",
  "relevant", "source", "text"}`` queries (a docstring's first paragraph; ``relevant`` is the id
  of its one relevant passage).
- ``CALIBRATION`` (623 rows, 0.2 MB): ``{"kind", "source", "text"}``, what int8 calibration
  reads by default (``export/calibration.py``): 256 docstrings held out of the retrieval set,
  239 of their first paragraphs, 128 synthetic queries and passages, shuffled. No text of it is
  in ``RETRIEVAL`` (checked when written), so the gate never measures on what calibration saw.
"""

from pathlib import Path

HERE = Path(__file__).resolve().parent
SAMPLE_QUERIES = HERE / "sample_queries.jsonl"
RETRIEVAL = HERE / "retrieval.jsonl"
CALIBRATION = HERE / "calibration.jsonl"
