"""Registry parsing and validation: the shipped file, profiles, and clear errors on bad files."""

import pytest

from core.settings import SettingsError, settings
from models.registry import load_registry, parse_registry
from models.schema import Engine, Pooling, RegistryError

MINIMAL = """
models:
  m:
    engine: ort
    store_tag: m
    pooling: mean
    max_tokens: 16
    dimensions: 8
profiles:
  p: {models: [m]}
"""


def test_shipped_registry_is_valid_and_cpu_serves_minilm():
    registry = load_registry()
    cpu = registry.served("cpu")
    spec = cpu.find("all-MiniLM-L6-v2")
    assert spec is not None and spec.engine is Engine.ORT and spec.pooling is Pooling.MEAN
    assert (spec.dimensions, spec.max_tokens, spec.normalize) == (384, 256, True)
    assert cpu.find("sentence-transformers/all-MiniLM-L6-v2") is spec
    assert set(cpu.runners) == {Engine.ORT}


def test_rtx4090_profile_lists_the_gpu_stack():
    rtx = load_registry().served("rtx4090")
    names = {m.name for m in rtx.models}
    assert names == {"Qwen3-Embedding-8B", "pubmedbert", "pubmedbert-onnx", "biomedbert", "colqwen2"}
    colqwen2 = rtx.find("vidore/colqwen2-v1.0")  # colpali-engine's 4-768 visual tokens
    assert (colqwen2.vision.min_pixels, colqwen2.vision.max_pixels, colqwen2.vision.max_visual_tokens) == (
        4 * 28 * 28, 768 * 28 * 28, 768)
    qwen = rtx.find("Qwen/Qwen3-Embedding-8B")
    assert qwen.pooling is Pooling.LAST and qwen.allows_dimensions(32) and not qwen.allows_dimensions(31)
    assert qwen.instructions.query.startswith("Instruct: ") and qwen.instructions.document == ""


def test_minimal_registry_gets_defaults():
    served = parse_registry(MINIMAL).served("p")
    spec = served.find("m")
    assert spec.name == "m" and spec.normalize and spec.truncate and spec.matryoshka is None
    assert served.gateway.max_inputs_per_request == 2048


@pytest.mark.parametrize(
    "change, message",
    [
        (("pooling: mean", "pooling: average"), "models.m.pooling"),
        (("max_tokens: 16", "max_tokens: -1"), "models.m.max_tokens"),
        (("engine: ort", "engine: tgi"), "models.m.engine"),
        (("store_tag: m", "store_tag: Big Name"), "models.m.store_tag"),
        (("dimensions: 8", "dimensions: 8\n    colour: red"), "models.m.colour"),
        (("models: [m]", "models: [nope]"), "unknown model 'nope'"),
        (("pooling: mean", "pooling: multi\n    vision: {min_pixels: 50176, max_pixels: 3136}"),
         "models.m.vision: Value error, min_pixels must not exceed max_pixels"),
        (("pooling: mean", "pooling: multi\n    vision: {min_pixels: 100, max_pixels: 3136}"),
         "models.m.vision.min_pixels"),
        (("pooling: mean", "pooling: multi\n    vision: {buckets: [[224, 168]], min_pixels: 3136, "
          "max_pixels: 50176}"), "models.m.vision.buckets"),  # the fixed buckets are gone
    ],
)
def test_bad_registry_names_the_field(change, message):
    with pytest.raises(RegistryError, match=message.replace(".", r"\.")):
        parse_registry(MINIMAL.replace(*change), "bad.yaml")


def test_unknown_profile_and_unreadable_file_are_clear(tmp_path):
    with pytest.raises(RegistryError, match="profile 'gpu' is not in the registry"):
        parse_registry(MINIMAL).served("gpu")
    with pytest.raises(RegistryError, match="cannot read registry"):
        load_registry(tmp_path / "missing.yaml")
    with pytest.raises(RegistryError, match="not valid YAML"):
        parse_registry("models: [", "broken.yaml")


def test_gateway_limits_from_environment(monkeypatch):
    monkeypatch.setenv("EMBED_MAX_BODY_BYTES", "1234")
    assert parse_registry(MINIMAL).gateway.max_body_bytes == 1234
    monkeypatch.setenv("EMBED_MAX_INFLIGHT_INPUTS", "10")
    settings.cache_clear()
    with pytest.raises(RegistryError, match=r"^registry: gateway: .*max_inflight_inputs must admit one request of "
                       r"max_inputs_per_request \(with EMBED_MAX_BODY_BYTES=1234, EMBED_MAX_INFLIGHT_INPUTS=10 from "
                       r"the environment\)$"):
        parse_registry(MINIMAL)
    monkeypatch.setenv("EMBED_MAX_INPUTS_PER_REQUEST", "abc")  # the variable is named, not registry.yaml
    settings.cache_clear()
    with pytest.raises(SettingsError, match=r"^EMBED_MAX_INPUTS_PER_REQUEST='abc': Input should be a valid integer, "
                       r"unable to parse string as an integer; set it to integer > 0 or unset it$"):
        parse_registry(MINIMAL)


def test_gateway_workers_per_profile_auto_from_the_cores_and_from_the_environment(monkeypatch):
    monkeypatch.delenv("EMBED_GATEWAY_WORKERS", raising=False)
    assert parse_registry(MINIMAL).served("p").gateway_workers() == 1
    auto = parse_registry(MINIMAL.replace("p: {models: [m]}", "p: {models: [m], gateway_workers: auto,\n"
                                          "      runners: {ort: {workers: 2}}}")).served("p")
    assert [auto.gateway_workers(cores) for cores in (1, 3, 16)] == [1, 1, 14]  # cores less the runner's workers
    assert load_registry().served("rtx4090").gateway_workers(16) == 14  # the GPU profile: auto, 2 runners
    assert load_registry().served("cpu").gateway_workers(16) == 1
    monkeypatch.setenv("EMBED_GATEWAY_WORKERS", "3")
    settings.cache_clear()
    assert parse_registry(MINIMAL).served("p").gateway_workers() == 3
    for bad in ("0", "many"):
        monkeypatch.setenv("EMBED_GATEWAY_WORKERS", bad)
        settings.cache_clear()
        with pytest.raises(SettingsError, match=f"EMBED_GATEWAY_WORKERS='{bad}': not a number of workers"):
            parse_registry(MINIMAL).served("p")
    monkeypatch.delenv("EMBED_GATEWAY_WORKERS")
    settings.cache_clear()
    with pytest.raises(RegistryError, match="gateway_workers"):
        parse_registry(MINIMAL.replace("p: {models: [m]}", "p: {models: [m], gateway_workers: 0}"))


def test_matryoshka_range_must_fit_native_dimensions():
    bad = MINIMAL.replace("dimensions: 8", "dimensions: 8\n    matryoshka: {min: 4, max: 16}")
    with pytest.raises(RegistryError, match="matryoshka"):
        parse_registry(bad)


VARIANTS = """
models:
  m: {engine: ort, store_tag: m, pooling: mean, max_tokens: 16, dimensions: 8}
  m-next: {engine: ort, store_tag: m, pooling: mean, max_tokens: 16, dimensions: 8}
  wide: {engine: ort, store_tag: wide, pooling: mean, max_tokens: 16, dimensions: 16}
  pages: {engine: ort, store_tag: pages, pooling: multi, max_tokens: 16, dimensions: 8,
          vision: {min_pixels: 784, max_pixels: 3136}}
  pages-b: {engine: ort, store_tag: pages, pooling: multi, max_tokens: 16, dimensions: 8,
            vision: {min_pixels: 784, max_pixels: 3136}}
profiles:
  p:
    models: [m, pages]
    routing:
      m: {variants: {a: {}, b: {model: m-next, weight: 3}}, shadow: {variant: b, fraction: 0.5}}
"""


def test_variants_are_units_the_runners_load_and_default_to_the_first():
    served = parse_registry(VARIANTS).served("p")
    route = served.routes["m"]
    assert [(v.name, v.spec.name, v.weight) for v in route.variants] == [("a", "m", 1.0), ("b", "m-next", 3.0)]
    assert route.default == "a" and route.shadow.variant == "b"
    assert [u.name for u in served.units] == ["m", "m-next", "pages"] and served.unit("m-next").name == "m-next"
    assert [v.name for v in served.routes["pages"].variants] == ["default"]  # a model without routing
    assert [s.name for s in served.for_engine(Engine.ORT)] == ["m", "m-next", "pages"]
    ab = load_registry().served("cpu-ab")  # the shipped example: another engine as a variant
    assert set(ab.runners) == {Engine.ORT, Engine.VLLM} and [m.name for m in ab.models] == ["all-MiniLM-L6-v2"]


@pytest.mark.parametrize("routing, message", [
    ({"x": {"variants": {"a": {}}}}, "'x' is not one of the profile's models"),
    ({"m": {"variants": {"a": {"model": "nope"}}}}, "variants.a.model: unknown model 'nope'"),
    ({"m": {"variants": {"a": {"model": "wide"}}}}, "differs from 'm' in dimensions"),
    ({"m": {"variants": {"a": {"model": "pages"}}}}, "pooling .multi-vector or not., vision"),
    ({"m": {"variants": {"a": {}}, "default": "z"}}, "default 'z' is not one of the variants"),
    ({"m": {"variants": {"a": {}}, "shadow": {"variant": "z", "fraction": 1}}}, "shadow.variant 'z'"),
    ({"m": {"variants": {"a b": {}}}}, "variant names are letters"),
    ({"m": {"variants": {"a": {"weight": 0}}}}, "weights add up to 0"),
    ({"pages": {"variants": {"a": {}, "b": {"model": "pages-b"}}, "shadow": {"variant": "b", "fraction": 1}}},
     "shadow comparison is defined for pooled vectors"),
])
def test_bad_routing_is_refused_naming_the_field(routing, message):
    import yaml

    data = yaml.safe_load(VARIANTS)
    data["profiles"]["p"]["routing"] = routing
    with pytest.raises(RegistryError, match=message):
        parse_registry(yaml.safe_dump(data)).served("p")


PIN = {"store": "m", "digest": "sha256:" + "a" * 64, "files": {"model.onnx": "b" * 64}, "version": "aaaaaaaaaaaaaaaa"}


def lock(**pins) -> str:
    import yaml

    return yaml.safe_dump({"format": 1, "pins": pins})


def test_the_lock_pins_registry_models_by_content():
    registry = parse_registry(MINIMAL, lock=lock(m=PIN))
    assert registry.models["m"].pin.digest == PIN["digest"] and registry.models["m"].pin.files == PIN["files"]
    assert parse_registry(MINIMAL).models["m"].pin is None


@pytest.mark.parametrize("text, lock_text, message", [
    (MINIMAL.replace("store_tag: m", "store_tag: m\n    pin: {}"), None, "models.m.pin: pins live in registry.lock"),
    (MINIMAL, lock(other=PIN), "pins other, which registry does not have"),
    (MINIMAL.replace("store_tag: m", "store_tag: m:v1"), lock(m=PIN), "names a version and registry.lock pins"),
    (MINIMAL, lock(m={**PIN, "store": "n"}), "pins store entry 'n', the registry says 'm'"),
    (MINIMAL, lock(m={**PIN, "digest": "md5:1"}), "models.m.pin.digest"),
    (MINIMAL, "pins: {}", "not a registry lock"),
])
def test_a_bad_pin_is_refused_naming_the_fix(text, lock_text, message):
    with pytest.raises(RegistryError, match=message):
        parse_registry(text, lock=lock_text)


def test_the_shipped_lock_pins_the_offline_models_and_is_read_beside_the_registry():
    registry = load_registry()
    pinned = {name for name, spec in registry.models.items() if spec.pin is not None}
    assert pinned == {"all-MiniLM-L6-v2", "all-MiniLM-L6-v2-vllm", "all-MiniLM-L6-v2-int8", "colqwen2-tiny-random"}
    assert registry.models["all-MiniLM-L6-v2"].pin.files["model.onnx"]
