"""One image worker process: decodes images and renders PDF pages for the gateway, one part at a time.

Started by ``gateway/image_pool.py`` as ``python -m gateway.image_worker MEMORY_BYTES``. It talks
to the pool over its stdin and stdout (stdout is moved aside at start, so a library that prints
cannot corrupt the channel) in frames: 8 bytes little-endian length, then a pickle. The pool is
the only peer; nothing else reaches these pipes.

    worker -> pool  ("ready", address_space_bytes)      once, after the imports and the rlimit
    pool -> worker  PartTask                             one part to prepare
    worker -> pool  ("admit", pages, pixels, param)      before decoding pages: may I?
    pool -> worker  None, or (error class, message, param, code) to refuse
    worker -> pool  ("page", number, uint8 array)        each page, resized, as soon as it is done
    worker -> pool  ("done",) or ("error", class, message, param, code)
                    or ("fatal", ...): the same, and the worker exits (after a MemoryError)

Its address space is capped at MEMORY_BYTES (``RLIMIT_AS``): an image that needs more raises
MemoryError, answered as 422, after which the worker exits (the pool starts another). It dies
with the gateway (``PR_SET_PDEATHSIG``) and exits when its stdin closes.
"""

from __future__ import annotations

import ctypes
import logging
import os
import pickle
import resource
import signal
import struct
import sys
from typing import Any, BinaryIO

from core.errors import ApiError, InvalidRequest, Unprocessable

HEADER = struct.Struct("<Q")
ERRORS = {cls.__name__: cls for cls in (ApiError, InvalidRequest, Unprocessable)}
logger = logging.getLogger("gateway.image_worker")


def error_message(error: ApiError) -> tuple[str, str, str | None, str | None]:
    """An ``ApiError`` as the plain tuple the channel carries (exceptions do not pickle their fields)."""
    return type(error).__name__, error.message, error.param, error.code


def error_from(message: tuple[str, str, str | None, str | None]) -> ApiError:
    name, text, param, code = message
    return ERRORS.get(name, ApiError)(text, param=param, code=code)


def frame(value: Any) -> bytes:
    data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    return HEADER.pack(len(data)) + data


def read_frame(stream: BinaryIO) -> Any:
    """The next value; ``EOFError`` when the pool has gone."""
    header = _read_exactly(stream, HEADER.size)
    return pickle.loads(_read_exactly(stream, HEADER.unpack(header)[0]))


def _read_exactly(stream: BinaryIO, size: int) -> bytes:
    chunks, left = [], size
    while left:
        chunk = stream.read(left)
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def address_space_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def main(memory_bytes: int) -> None:
    channel_in = os.fdopen(os.dup(0), "rb", buffering=0)
    channel_out = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)  # stray prints go to the log, not into the channel
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: die with the gateway
    if os.getppid() == 1:
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s[%(process)d] %(levelname)s %(message)s")

    import pypdfium2  # noqa: F401  (images imports it on first use; here, so the start-up size counts it)

    from gateway import images

    used = address_space_bytes()
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))

    def send(value: Any) -> None:
        channel_out.write(frame(value))

    send(("ready", used))
    while True:
        try:
            task = read_frame(channel_in)
        except EOFError:
            return

        def admit(pages: int, pixels: int, param: str) -> None:
            send(("admit", pages, pixels, param))
            refusal = read_frame(channel_in)
            if refusal is not None:
                raise error_from(refusal)

        try:
            for number, page in images.prepare_part(task, admit):
                send(("page", number, page))
                del page
            send(("done",))
        except EOFError:
            return  # the pool went away while this worker waited for an answer
        except ApiError as error:
            send(("error", *error_message(error)))
        except MemoryError:
            send(("fatal", *error_message(Unprocessable(
                f"{task.param} needs more memory to decode than an image worker may use "
                f"({memory_bytes // 2**20} MiB of address space).", param=task.param))))
            return  # the heap may be fragmented past use: the pool starts a fresh worker
        except Exception as exc:
            logger.exception("unexpected error on %s", task.param)
            send(("error", *error_message(ApiError(
                f"The server had an error while decoding {task.param} ({type(exc).__name__})."))))


if __name__ == "__main__":
    main(int(sys.argv[1]))
