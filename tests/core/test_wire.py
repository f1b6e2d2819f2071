"""The gateway<->runner wire format (core/wire.py): calls and results round-trip exactly, and every
malformed frame is a WireError naming what is wrong."""

import numpy as np
import pytest

from core.wire import Job, JobError, JobFailure, WireError, pack_call, pack_results, unpack_call, unpack_results


def test_a_call_round_trips_through_the_wire_format():
    page = np.random.default_rng(0).integers(0, 256, (28, 56, 3), dtype=np.uint8)
    jobs = [Job("a", None, np.asarray([101, 7, 102]), 1.5), Job("b", "int8", np.asarray([101, 102]), 2.25),
            Job("pages", None, page, 3.0), Job("a", None, np.asarray([101, 9, 9, 102]), 4.0)]
    body = pack_call(jobs)
    assert body[:4] == b"EMBC" and np.asarray([101, 7, 102, 101, 102], "<i4").tobytes() in body  # int32 ids
    assert page.tobytes() in body
    back = unpack_call(body)
    assert [(j.model, j.variant, j.sent_at) for j in back] == [(j.model, j.variant, j.sent_at) for j in jobs]
    assert [j.value.tolist() for j in back[:2] + back[3:]] == [[101, 7, 102], [101, 102], [101, 9, 9, 102]]
    assert back[0].value.dtype == np.int32 and (back[2].value == page).all()


def test_results_round_trip_float32_little_endian_with_failures_in_place():
    vector, matrix = np.array([0.5, -1.25, 3.0], np.float32), np.arange(6, dtype=np.float32).reshape(2, 3)
    body = pack_results([vector, JobError(JobFailure.ENGINE, "boom"), matrix])
    assert vector.astype("<f4").tobytes() + matrix.astype("<f4").tobytes() in body
    first, failed, rows = unpack_results(body)
    np.testing.assert_array_equal(first, vector)
    assert failed == JobError(JobFailure.ENGINE, "boom")
    np.testing.assert_array_equal(rows.reshape(-1, 3), matrix)


@pytest.mark.parametrize("change, message", [
    (lambda b: b[:3], "shorter than the wire format's prefix"),
    (lambda b: b"EMBR" + b[4:], "not b'EMBC'"),
    (lambda b: b[:-1], "shorter than its header says"),
    (lambda b: b + b"\0", "follow the last array"),
    (lambda b: b.replace(b'"n":2', b'"n":9'), "shorter than its header says"),
    (lambda b: b.replace(b'"targets":[["a",null]]', b'"targets":[["a",7]]   '), "'targets' is not"),
])
def test_a_malformed_call_is_a_wire_error(change, message):
    body = pack_call([Job("a", None, np.asarray([1, 2]), 0.0), Job("a", None, np.asarray([3]), 0.0)])
    with pytest.raises(WireError, match=message):
        unpack_call(change(body))


def test_a_call_whose_arrays_disagree_with_its_header_is_a_wire_error():
    jobs = [Job("a", None, np.asarray([1, 2]), 0.0), Job("pages", None, np.zeros((28, 28, 3), np.uint8), 0.0)]
    body = bytearray(pack_call(jobs))
    start = body.index(b"}") + 1
    start += -start % 8  # the arrays: sent_at f8[2], target i4[2], image i4[2], offsets i4[3], ...
    offsets = start + 16 + 8 + 8
    body[offsets + 4:offsets + 8] = np.int32(1).tobytes()  # offsets [0, 1, 2]: the image job gets an id too
    with pytest.raises(WireError, match="both token ids and an image"):
        unpack_call(bytes(body))
    body[offsets + 4:offsets + 8] = np.int32(3).tobytes()  # offsets [0, 3, 2] no longer grow
    with pytest.raises(WireError, match="do not start at 0 and grow"):
        unpack_call(bytes(body))
