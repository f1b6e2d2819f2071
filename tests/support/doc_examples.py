"""The request examples of README.md and docs/api.md, pulled out of the Markdown so that the test
module serving each example's profile runs it as written: a doc that drifts from the server fails.

Markup, on the line right before a fenced block (readers also see a line naming the profile, such
as "On `make serve PROFILE=cpu-all`:", above it):

- ``<!-- example: profile=P -->``: a request example for profile P. A ``curl`` block runs through
  bash, a Python block with the real OpenAI client. ``status=N`` after the profile: the example
  must answer HTTP N (a documented error); otherwise 200.
- ``<!-- example: answer -->``: the answer the doc shows for the nearest example above it: JSON
  (``...`` marks elided items) or plain lines (``curl -i ... | grep``).

Every block that sends a request (one with a ``curl`` command, or Python that makes an OpenAI
client) must carry a profile marker; ``unmarked()`` lists those that do not.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCS = ("README.md", "docs/api.md")
# The test module that starts a server of each profile and runs its examples (no server is started
# for the docs alone, except cpu-ab's, which no other module serves).
MODULES = {"cpu": "tests/service/test_server.py", "cpu-all": "tests/service/test_vllm_server.py",
           "cpu-ab": "tests/service/test_cpu_ab_server.py"}
DOC_URL = re.compile(r"(?:http://)?localhost:3000")
DOC_KEY = 'api_key="unused"'
FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.M | re.S)
MARKER = re.compile(r"^<!-- example: (.*) -->$")
PRINTED = re.compile(r"^\s*print\(.*\)\s*#\s*(.+?)\s*$", re.M)
# bash: curl with the test server's API key added (unless the example sends its own Authorization)
# and the HTTP status written to stderr.
CURL = """set -euo pipefail
curl() {
  local auth=()
  if [[ -n "${DOC_API_KEY:-}" && "$*" != *"Authorization:"* ]]; then auth=(-H "Authorization: Bearer $DOC_API_KEY"); fi
  command curl "${auth[@]}" -w '%{stderr}%{http_code}\\n' "$@"
}
"""


@dataclasses.dataclass(frozen=True)
class Block:
    """One fenced block: its doc, the line of its opening fence, language, text, and the marker
    on the line before it ('' when none)."""

    doc: str
    line: int
    language: str
    code: str
    marker: str
    before: str  # the paragraph right above the marker (or the fence): what readers see

    def sends_request(self) -> bool:
        return bool(re.search(r"(^|[\s|(])curl ", self.code)) or (self.language == "python" and "OpenAI(" in self.code)


@dataclasses.dataclass(frozen=True)
class Example:
    """A request example and the answer its doc shows (None when the doc shows none)."""

    doc: str
    line: int
    language: str  # "curl" or "python"
    code: str
    profile: str
    status: int
    answer: str | None
    before: str

    def __str__(self) -> str:
        return f"{self.doc}:{self.line}"


def blocks(doc: str) -> list[Block]:
    text = (ROOT / doc).read_text()
    found = []
    for match in FENCE.finditer(text):
        above = text[: match.start()].rstrip("\n").split("\n")
        marker = MARKER.match(above[-1].strip())
        if marker:
            above.pop()
        paragraph = []
        while above and above[-1].strip() and not above[-1].startswith("```"):
            paragraph.insert(0, above.pop().strip())
        found.append(Block(doc, text.count("\n", 0, match.start()) + 1, match.group(1), match.group(2),
                           marker.group(1).strip() if marker else "", " ".join(paragraph)))
    return found


def parse_marker(marker: str) -> dict[str, str]:
    """``profile=cpu status=400`` -> {"profile": "cpu", "status": "400"}; ``answer`` -> {"answer": ""}."""
    fields = {}
    for word in marker.split():
        key, _, value = word.partition("=")
        fields[key] = value
    return fields


def examples(profile: str | None = None) -> list[Example]:
    """The marked examples of every doc (of one profile when given), each with its answer."""
    found: list[Example] = []
    for doc in DOCS:
        last: Example | None = None
        for block in blocks(doc):
            fields = parse_marker(block.marker)
            if "answer" in fields:
                if last is None or last.answer is not None:
                    raise ValueError(f"{doc}:{block.line}: an answer marker with no example above it to answer")
                last = dataclasses.replace(last, answer=block.code)
                found[-1] = last
            elif "profile" in fields:
                language = "python" if block.language == "python" else "curl"
                last = Example(doc, block.line, language, block.code, fields["profile"],
                               int(fields.get("status", 200)), None, block.before)
                found.append(last)
    return [e for e in found if profile is None or e.profile == profile]


def shows_profile(example: Example) -> bool:
    """Whether the paragraph above the example tells readers its profile: ``make serve
    PROFILE=P``, or for the default profile ``make serve`` with "(profile `cpu`"."""
    if example.profile == "cpu":
        return "`make serve`" in example.before and "(profile `cpu`" in example.before
    return f"PROFILE={example.profile}`" in example.before


def unmarked() -> list[str]:
    """``doc:line`` of each block that sends a request but carries no profile marker."""
    return [f"{b.doc}:{b.line}" for doc in DOCS for b in blocks(doc)
            if b.sends_request() and "profile" not in parse_marker(b.marker)]


def sample_json(answer: str) -> object | None:
    """A doc's sample answer as JSON with its elisions (``, ...``) dropped; None when it is not JSON."""
    try:
        return json.loads(re.sub(r",\s*\.\.\.", "", answer))
    except json.JSONDecodeError:
        return None


def key_differences(sample: object, real: object, path: str = "") -> list[str]:
    """Where ``real`` lacks a key of ``sample`` or has one it lacks, through nested objects and the
    items a sample list shows (a sample shows a list's first items); scalars are not compared."""
    if isinstance(sample, dict):
        if not isinstance(real, dict):
            return [f"{path or '.'}: an object in the doc, {type(real).__name__} in the answer"]
        differences = [f"{path}.{key}: {'only in the doc' if key in sample else 'not in the doc'}"
                       for key in sorted(set(sample) ^ set(real))]
        return differences + [d for key in sample if key in real
                              for d in key_differences(sample[key], real[key], f"{path}.{key}")]
    if isinstance(sample, list):
        if not isinstance(real, list) or len(real) < len(sample):
            return [f"{path}: a list of {len(sample)}+ items in the doc, not in the answer"]
        return [d for i, item in enumerate(sample) for d in key_differences(item, real[i], f"{path}[{i}]")]
    return []


@dataclasses.dataclass(frozen=True)
class Run:
    """What running an example gave: the shell's or Python's exit code and output."""

    returncode: int
    stdout: str
    stderr: str
    status: int | None  # the HTTP status of a curl example


def run(example: Example, base_url: str, api_key: str | None = None, env: dict[str, str] | None = None,
        timeout: float = 120) -> Run:
    """Run the example as written against ``base_url`` (which replaces the doc's
    ``localhost:3000``), adding ``api_key`` where the server wants one: a curl example gets the
    header, a Python example's ``api_key="unused"`` becomes it. ``env``: variables the example
    reads (``$ADMIN_KEY``)."""
    code = DOC_URL.sub(base_url, example.code)
    variables = {**os.environ, **(env or {})}
    if example.language == "python":
        if api_key:
            code = code.replace(DOC_KEY, f'api_key="{api_key}"')
        done = subprocess.run([sys.executable, "-"], input=code, capture_output=True, text=True, timeout=timeout,
                              cwd=ROOT, env=variables)
        return Run(done.returncode, done.stdout, done.stderr, None)
    variables["DOC_API_KEY"] = api_key or ""
    done = subprocess.run(["bash", "-c", CURL + code], capture_output=True, text=True, timeout=timeout, env=variables)
    statuses = re.findall(r"^(\d{3})$", done.stderr, re.M)
    return Run(done.returncode, done.stdout, done.stderr, int(statuses[-1]) if statuses else None)


def check(example: Example, base_url: str, api_key: str | None = None, env: dict[str, str] | None = None) -> Run:
    """Run the example and fail (AssertionError) unless it succeeds with its documented status and
    its answer has the documented shape: the keys of the doc's sample answer (an error's sample:
    equal to the answer), the sample's lines for a plain-text answer, what each ``print(...)  #
    value`` of a Python example says it prints; any curl answer that is not headers must be JSON."""
    done = run(example, base_url, api_key, env)
    where = f"{example} (profile {example.profile}): rc {done.returncode}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    if example.language == "python":
        assert done.returncode == 0, where
        printed = PRINTED.findall(example.code)
        assert done.stdout.split("\n")[: len(printed)] == printed, where
        return done
    assert done.status == example.status, where
    assert done.returncode == 0, where
    if example.answer is None:
        if " -i " not in example.code:
            json.loads(done.stdout)
        return done
    sample = sample_json(example.answer)
    if sample is None:
        real_lines = [line.strip() for line in done.stdout.splitlines() if line.strip()]
        assert real_lines == [line.strip() for line in example.answer.splitlines() if line.strip()], where
        return done
    real = json.loads(done.stdout)
    if example.status >= 400:
        assert real == sample, where
    differences = key_differences(sample, real)
    assert not differences, f"{where}\nthe doc's sample answer and the real one differ: {differences}"
    return done
