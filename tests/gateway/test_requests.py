"""A request's small pieces without a server: parsing the OpenAI shapes and naming the bad field, API
keys, admission."""

import pytest

from core.errors import InvalidRequest, Overloaded, Unauthorized
from core.settings import Settings
from gateway.admission import Admission
from gateway.auth import ApiKeys, load_keys
from gateway.parsing import parse_request
from gateway.protocol import RerankRequest


@pytest.mark.parametrize(
    "body, expected",
    [
        (b'{"model":"m","input":"hi"}', "hi"),
        (b'{"model":"m","input":["a","b"]}', ["a", "b"]),
        (b'{"model":"m","input":[1,2,3]}', [1, 2, 3]),
        (b'{"model":"m","input":[[1],[2,3]]}', [[1], [2, 3]]),
    ],
)
def test_input_shapes_of_the_openai_spec(body, expected):
    assert parse_request(body).input == expected


@pytest.mark.parametrize(
    "body, param, fragment",
    [
        (b"{not json", None, "not a valid JSON object"),
        (b"[1,2]", None, "not a valid JSON object"),
        (b'{"input":"hi"}', "model", "'model' is a required property"),
        (b'{"model":"m"}', "input", "'input' is a required property"),
        (b'{"model":"m","input":[1,"a"]}', "input", "'input' must be"),
        (b'{"model":"m","input":[1.5]}', "input", "'input' must be"),
        (b'{"model":"m","input":[true]}', "input", "'input' must be"),
        (b'{"model":"m","input":[-3]}', "input", "from 0 to"),
        (b'{"model":"m","input":{"text":"x"}}', "input", "'input' must be"),
        (b'{"model":"m","input":"x","encoding_format":"int8"}', "encoding_format", "Invalid value"),
        (b'{"model":"m","input":"x","dimensions":0}', "dimensions", "Invalid value"),
        (b'{"model":"m","input":"x","temperature":1}', "temperature", "Unrecognized request argument"),
        (b'{"model":7,"input":"x"}', "model", "Invalid value"),
        (b'{"model":"m","input":[9999999999999999999]}', "input", "from 0 to"),  # 64 bits (unsigned)
        (b'{"model":"m","input":[99999999999999999999]}', "input", "outside the 64-bit range"),
        (b'{"model":"m","input":[101, 1e400, 102]}', "input", "outside the 64-bit range"),
        (b'{"model":"m","input":"x","dimensions":1e400}', "dimensions", "outside the 64-bit range"),
        (b'{"model":"m","input":"x","dimensions":100000000000000000000}', "dimensions", "outside the 64-bit range"),
        (b'{"model":"m","input":"x","dimensions":1e20}', "dimensions", "Invalid value"),
        (b'{"model":"m","input":[01]}', "input", "not valid JSON"),
        (b'{"model":"m","input":[1, NaN, 1e400]}', None, "not a valid JSON object"),
        (b'{"model":"m","input":"x","truncate":"yes"}', "truncate", "Invalid value"),
    ],
)
def test_bad_bodies_name_the_field(body, param, fragment):
    with pytest.raises(InvalidRequest) as info:
        parse_request(body)
    assert info.value.param == param and fragment in info.value.message
    assert info.value.body()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("body, param", [
    (b'{"model":"m","query":"q","documents":["d"],"top_n":100000000000000000000}', "top_n"),
    (b'{"model":"m","query":"q","documents":["d"],"top_n":1e400}', "top_n"),
    (b'{"model":"m","query":"q","documents":["d"],"top_n":1e20}', "top_n"),
])
def test_rerank_numbers_out_of_range_name_their_field(body, param):
    """Finding 7 of issue 20: these were 400s with param null."""
    with pytest.raises(InvalidRequest) as info:
        parse_request(body, RerankRequest)
    assert info.value.param == param, info.value.message


def test_api_keys(tmp_path):
    keyfile = tmp_path / "keys"
    keyfile.write_text("# team keys\nfile-key\n\n")
    keys = ApiKeys(load_keys(Settings(api_keys="env-key, other", api_keys_file=keyfile)))
    for good in ("Bearer env-key", "bearer other", "Bearer file-key"):
        keys.check(good)
    for bad in (None, "", "Bearer", "Bearer wrong", "Basic env-key", "env-key"):
        with pytest.raises(Unauthorized):
            keys.check(bad)
    ApiKeys(()).check(None)  # no keys configured: open


def test_admission_bounds_inflight_inputs():
    admission = Admission(max_inflight_inputs=10, retry_after_s=2)
    with admission.admit(6):
        with admission.admit(4):
            assert admission.inflight == 10
            with pytest.raises(Overloaded) as info:
                with admission.admit(1):
                    pass
            assert info.value.status == 429 and info.value.headers == {"Retry-After": "2"}
    assert admission.inflight == 0
