"""Variants, shadow traffic and routing changes on real servers, laid out as in Kubernetes: one ORT
runner (``bentoml serve runners.ort.service:OrtRunner``) and two gateway replicas reaching it by
URL, sharing a routing file (``EMBED_ROUTING_FILE``).

The test registry is the shipped one (with its lock) plus a profile whose all-MiniLM-L6-v2 has
three variants: ``a`` (itself, pinned), ``b`` (``all-MiniLM-L6-v2-twin``: the same store entry
under another registry name, so its own engine with identical weights) and ``r``
(``tiny-random-384``: a random 2-layer BERT of the same width, exported here, weight 0): a
known identical pair and a known different one.
"""

from __future__ import annotations

import shutil
import statistics
import threading
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml

from gateway import assignment
from gateway.shadow import MIN_TOPK_INPUTS, agreement
from tests.support.export_cli import cli
from tests.support.servers import API_KEY, ROOT, bentoml_server, own_bentoml_home, session_store
from tests.support.tiny_models import tiny_bert

pytestmark = pytest.mark.server

MODEL = "all-MiniLM-L6-v2"
ADMIN_KEY = "admin-key-456"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
USERS = [f"user-{i:04d}" for i in range(1000)]
TEXTS = [f"passage {i} about {topic}" for i, topic in enumerate(
    ["cats", "dogs", "stock markets", "rain", "football", "tax law", "jazz", "volcanoes", "bread", "chess",
     "trains", "sleep", "coffee", "bridges", "orchids", "comets", "glaciers", "poetry", "viruses", "cheese"])]


def variant_registry(folder: Path) -> Path:
    registry = yaml.safe_load((ROOT / "models/registry.yaml").read_text())
    minilm = registry["models"][MODEL]
    registry["models"]["all-MiniLM-L6-v2-twin"] = {**minilm, "aliases": [], "description": "the same entry again"}
    registry["models"]["tiny-random-384"] = {**minilm, "aliases": [], "store_tag": "tiny-random-384", "source": None,
                                            "description": "random weights, as wide as all-MiniLM-L6-v2"}
    registry["profiles"]["variants"] = {
        "models": [MODEL],
        "runners": {"ort": {"resources": {"cpu": "2"}, "batching": {"max_batch_size": 128}}},
        "routing": {MODEL: {"variants": {"a": {"weight": 1}, "b": {"model": "all-MiniLM-L6-v2-twin", "weight": 1},
                                         "r": {"model": "tiny-random-384", "weight": 0}}}},
    }
    (folder / "registry.yaml").write_text(yaml.safe_dump(registry, sort_keys=False))
    shutil.copy(ROOT / "models/registry.lock", folder / "registry.lock")
    return folder / "registry.yaml"


@pytest.fixture(scope="module")
def replicas(tmp_path_factory):
    """The runner and two gateways; yields (gateway A, gateway B, runner URL, folder)."""
    tmp = tmp_path_factory.mktemp("variants")
    store = tmp / "store" / "models"  # the session store's MiniLM, and the random model exported here
    store.mkdir(parents=True)
    (store / "all-minilm-l6-v2").symlink_to(session_store() / "all-minilm-l6-v2", target_is_directory=True)
    done = cli(tmp / "store", "onnx", "--source", str(tiny_bert(tmp / "tiny")), "--name", "tiny-random-384",
               "--pooling", "mean", "--normalize", "--max-tokens", "256")
    assert done.returncode == 0, done.stderr
    base = {"EMBED_REGISTRY": str(variant_registry(tmp)), "EMBED_PROFILE": "variants",
            "BENTOML_HOME": own_bentoml_home(tmp / "home", store)}  # one home, three servers
    with bentoml_server(base, tmp / "runner.log", "runners.ort.service:OrtRunner") as runner:
        gateway = {**base, "EMBED_API_KEYS": API_KEY, "EMBED_ADMIN_API_KEYS": ADMIN_KEY,
                   "EMBED_ROUTING_FILE": str(tmp / "routing.json"), "EMBED_RUNNER_URL_ORT": runner,
                   "BENTOML_CONFIG_OPTIONS": "services.gateway.runner_probe.enabled=false"}
        with bentoml_server(gateway, tmp / "a.log") as a, bentoml_server(gateway, tmp / "b.log") as b:
            yield a, b, runner, tmp


@pytest.fixture()
def gateways(replicas):
    """Both gateways, with the profile's routing back in place on both."""
    a, b, _, _ = replicas
    state = admin(a, {"model": MODEL, "reset": True})
    wait_revision(b, state["revision"])
    return a, b


def admin(url: str, change: dict) -> dict:
    response = httpx.post(f"{url}/v1/admin/routing", json=change, headers=ADMIN, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def wait_revision(url: str, revision: int, timeout: float = 10) -> float:
    """Seconds until gateway ``url`` serves routing revision ``revision``."""
    started = time.monotonic()
    while httpx.get(f"{url}/v1/admin/routing", headers=ADMIN, timeout=10).json()["revision"] < revision:
        assert time.monotonic() - started < timeout, f"{url} did not reach revision {revision}"
        time.sleep(0.05)
    return time.monotonic() - started


def embed(http: httpx.Client, url: str, inputs, **extra) -> httpx.Response:
    headers = {**AUTH, **extra.pop("headers", {})}
    return http.post(f"{url}/v1/embeddings", json={"model": MODEL, "input": inputs, **extra}, headers=headers)


def variants_of(url: str, users: list[str]) -> dict[str, str]:
    """Each user's variant (the X-Embedding-Variant of its answer), 8 clients at a time."""
    found: dict[str, str] = {}

    def client(part: list[str]) -> None:
        with httpx.Client(timeout=60) as http:
            for user in part:
                response = embed(http, url, f"hello from {user}", user=user)
                assert response.status_code == 200, response.text
                found[user] = response.headers["x-embedding-variant"]

    threads = [threading.Thread(target=client, args=(users[i::8],)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return found


def metric(url: str, name: str, **labels) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    wanted = [f'{key}="{value}"' for key, value in labels.items()]
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + "{") and all(w in line for w in wanted))


def test_a_fifty_fifty_split_over_1000_users_is_even_sticky_and_the_same_on_every_replica(gateways):
    a, b = gateways
    first = variants_of(a, USERS)
    share = sum(v == "a" for v in first.values()) / len(USERS)
    assert 0.45 <= share <= 0.55, share
    assert variants_of(b, USERS) == first  # the other replica: every user on the same variant
    assert variants_of(a, USERS[::5]) == {u: first[u] for u in USERS[::5]}  # and again: nobody switched
    layout = assignment.Layout.from_json(
        httpx.get(f"{a}/v1/admin/routing", headers=ADMIN).json()["models"][MODEL]["layout"], ["a", "b", "r"])
    seed = assignment.seed(MODEL)  # the documented hash, computed here
    assert {u: layout.owner(assignment.point(seed, u)) for u in USERS} == first


def test_the_header_forces_a_variant_and_requests_without_user_get_the_default(gateways):
    a, _ = gateways
    with httpx.Client(timeout=60) as http:
        vectors = {}
        for name in ("a", "b", "r"):
            response = embed(http, a, TEXTS[:3], user="someone", headers={"X-Embedding-Variant": name})
            assert response.status_code == 200 and response.headers["x-embedding-variant"] == name
            vectors[name] = np.array([d["embedding"] for d in response.json()["data"]])
        np.testing.assert_allclose(vectors["a"], vectors["b"], atol=1e-6)  # twins
        assert np.abs(vectors["a"] - vectors["r"]).max() > 0.1  # the random model is another function
        assert embed(http, a, "no user").headers["x-embedding-variant"] == "a"
        admin(a, {"model": MODEL, "default": "r"})
        assert embed(http, a, "no user").headers["x-embedding-variant"] == "r"
        refused = embed(http, a, "x", headers={"X-Embedding-Variant": "c"})
        assert refused.status_code == 400 and refused.json()["error"]["code"] == "variant_not_found"
        card = http.get(f"{a}/v1/models/{MODEL}", headers=AUTH).json()
    assert card["default_variant"] == "r"
    assert [(v["id"], v["model"], v["weight"]) for v in card["variants"]] == [
        ("a", MODEL, 0.5), ("b", "all-MiniLM-L6-v2-twin", 0.5), ("r", "tiny-random-384", 0.0)]


def shadowed(url: str, shadow: str, inputs: list[str], http: httpx.Client) -> tuple[float, float, float, float]:
    """Send ``inputs`` (answered by ``a``) with shadow ``shadow`` on; wait for its comparison; returns
    the increase of the cosine sum and count and of the top-5 overlap sum and count."""
    labels = {"model": MODEL, "variant": "a", "shadow": shadow}
    names = ("embedding_shadow_cosine_sum", "embedding_shadow_cosine_count", "embedding_shadow_topk_overlap_sum",
             "embedding_shadow_topk_overlap_count")
    before = [metric(url, name, **labels) for name in names]
    compared = metric(url, "embedding_shadow_requests_total", outcome="compared", **labels)
    response = embed(http, url, inputs, headers={"X-Embedding-Variant": "a"})
    assert response.status_code == 200
    deadline = time.monotonic() + 30
    while metric(url, "embedding_shadow_requests_total", outcome="compared", **labels) < compared + 1:
        assert time.monotonic() < deadline, httpx.get(f"{url}/metrics").text[-3000:]
        time.sleep(0.1)
    return tuple(metric(url, name, **labels) - b for name, b in zip(names, before, strict=True))


def test_shadow_agreement_of_an_identical_pair_is_one(gateways):
    a, _ = gateways
    admin(a, {"model": MODEL, "shadow": {"variant": "b", "fraction": 1.0}})
    with httpx.Client(timeout=60) as http:
        cosine_sum, cosines, overlap_sum, overlaps = shadowed(a, "b", TEXTS, http)
    assert cosines == len(TEXTS) and overlaps == len(TEXTS) >= MIN_TOPK_INPUTS
    assert cosine_sum == pytest.approx(len(TEXTS), abs=1e-5) and overlap_sum == len(TEXTS)


def test_shadow_agreement_of_a_known_different_pair_is_what_its_vectors_give(gateways):
    a, _ = gateways
    admin(a, {"model": MODEL, "shadow": {"variant": "r", "fraction": 1.0}})
    with httpx.Client(timeout=60) as http:
        cosine_sum, cosines, overlap_sum, overlaps = shadowed(a, "r", TEXTS, http)
        forced = {name: np.array([d["embedding"] for d in embed(
            http, a, TEXTS, headers={"X-Embedding-Variant": name}).json()["data"]]) for name in ("a", "r")}
    cosine, overlap = agreement(forced["a"], forced["r"])
    assert cosines == overlaps == len(TEXTS)
    assert cosine_sum == pytest.approx(cosine.sum(), abs=1e-4) and cosine.sum() < 0.9 * len(TEXTS)
    assert abs(overlap_sum - overlap.sum()) <= 0.4  # a near tie in a top 5 may flip between batchings
    assert overlap.sum() < len(TEXTS)


class UserLoad:
    """``clients`` threads sending small requests with users, until ``stop``; every answer kept."""

    def __init__(self, url: str, clients: int = 4) -> None:
        self.url = url
        self.outcomes: list[tuple[float, int | str, str | None]] = []  # (time, status or error, variant)
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(clients)]

    def __enter__(self) -> UserLoad:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(90)

    def _client(self, index: int) -> None:
        with httpx.Client(timeout=60) as http:
            n = 0
            while not self._stop.is_set():
                n += 1
                try:
                    response = embed(http, self.url, [f"client {index} text {n}", "another"], user=f"load-{index}-{n}")
                    self.outcomes.append((time.monotonic(), response.status_code,
                                          response.headers.get("x-embedding-variant")))
                except httpx.HTTPError as exc:
                    self.outcomes.append((time.monotonic(), type(exc).__name__, None))


def test_routing_changes_under_load_lose_nothing_and_reach_the_other_replica(gateways):
    a, b = gateways
    changes = [
        {"weights": {"a": 0, "b": 1}},
        {"weights": {"a": 1, "b": 0, "r": 1}, "default": "b"},
        {"shadow": {"variant": "b", "fraction": 0.5}},
        {"weights": {"a": 1, "b": 1, "r": 0}, "default": "a"},
        {"shadow": None},
        {"weights": {"a": 0, "b": 1}},
    ]
    propagation = []
    with UserLoad(a) as load_a, UserLoad(b, clients=2) as load_b:
        time.sleep(1)
        for change in changes:
            state = admin(a, {"model": MODEL, **change})
            propagation.append(wait_revision(b, state["revision"]))
            time.sleep(0.5)
        changed_at = time.monotonic()
        time.sleep(1)
    outcomes = load_a.outcomes + load_b.outcomes
    assert len(outcomes) > 50
    assert {status for _, status, _ in outcomes} == {200}, [o for o in outcomes if o[1] != 200][:5]
    after = [variant for at, _, variant in load_a.outcomes if at > changed_at + 0.1]
    assert after and set(after) == {"b"}  # the last change, a: 0, b: 1, holds
    print(f"routing change reached the other replica after median {statistics.median(propagation):.2f} s, "
          f"max {max(propagation):.2f} s (file polled every 1 s)")
    assert max(propagation) < 5


def test_a_variant_the_runners_did_not_load_is_refused_naming_the_rolling_restart(gateways):
    a, _ = gateways
    for change in ({"weights": {"c": 1}}, {"default": "all-MiniLM-L6-v2-vllm"}):
        response = httpx.post(f"{a}/v1/admin/routing", json={"model": MODEL, **change}, headers=ADMIN)
        error = response.json()["error"]
        assert response.status_code == 400 and error["code"] == "variant_not_loaded"
        assert "rolling restart" in error["message"] and "profiles.variants.routing.all-MiniLM-L6-v2.variants" in \
            error["message"]
    assert "embedding-vllm-runner" in error["message"]  # the runner that model would need
    assert httpx.post(f"{a}/v1/admin/routing", json={"model": MODEL, "default": "b"}).status_code == 401
    assert httpx.post(f"{a}/v1/admin/routing", json={"model": MODEL, "default": "b"}, headers=AUTH).status_code == 401


def test_variant_labels_stay_bounded(gateways, replicas):
    a, _ = gateways
    names = [uuid.uuid4().hex for _ in range(20)]
    with httpx.Client(timeout=30) as http:
        for name in names:
            assert embed(http, a, "x", headers={"X-Embedding-Variant": name}).status_code == 400
    text = httpx.get(f"{a}/metrics").text + httpx.get(f"{replicas[2]}/metrics").text
    assert not [name for name in names if name in text]
    labels = {line.split('variant="')[1].split('"')[0] for line in text.splitlines() if 'variant="' in line}
    assert labels <= {"a", "b", "r", "none"}, labels
    info = {line.split('variant="')[1].split('"')[0]: line.split('content="')[1].split('"')[0]
            for line in text.splitlines() if line.startswith("embedding_model_info{")}
    pin = yaml.safe_load((ROOT / "models/registry.lock").read_text())["pins"][MODEL]["digest"]
    assert info["a"] == info["b"] == pin.removeprefix("sha256:")[:12] != info["r"]  # the twin is the same entry
