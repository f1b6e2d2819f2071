"""TensorRT engine caches: one folder per engine key, built before serving, never rebuilt in place.

ONNX Runtime's TensorRT provider reads any engine file in its ``trt_engine_cache_path`` whose name
matches the graph, and its names do not change with the TensorRT version, the GPU or the weights
(ONNX Runtime's documentation: clear the cache yourself when they change). So each session gets a
folder of its own under the registry's cache path, named by what makes an engine valid:

    <cache_dir>/<trt_engine_cache_path>/trt<TensorRT>-<sm89>-ort<ONNX Runtime>-<content>-<settings>

``content`` hashes the store entry's content digest (graphs, external weights, tokenizer) and the
graph's name in it; ``settings`` hashes the TensorRT options and the optimisation profile. A TensorRT
upgrade, another GPU generation, a re-exported model or other build settings name another folder:
a stale or foreign engine is rebuilt there, never loaded.

``build(folder)``: builders take an exclusive ``flock`` on ``<folder>.lock`` (several processes or
pods on one shared volume: one builds, the others wait and then load), build into a temporary
folder beside it, write ``manifest.json`` and rename the folder into place (atomic on one file
system): a reader sees a complete folder or none. ``is_built(folder)`` is what runners check: they
never build (``runners/ort/providers.py``).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

MANIFEST = "manifest.json"


@dataclass(frozen=True)
class EngineKey:
    """What a TensorRT engine is valid for."""

    tensorrt: str  # "10.16.1"
    sm: str  # the GPU's compute capability, "sm89"
    onnxruntime: str
    content: str  # the store entry's content digest + the graph's name in it
    settings: str  # the TensorRT options (cache paths excluded) + the optimisation profile

    def folder_name(self) -> str:
        def short(text: str) -> str:
            return hashlib.sha256(text.encode()).hexdigest()[:16]

        return f"trt{self.tensorrt}-{self.sm}-ort{self.onnxruntime}-{short(self.content)}-{short(self.settings)}"


def settings_text(options: Mapping[str, str]) -> str:
    """The build settings as one canonical string (sorted ``key=value``)."""
    return ";".join(f"{key}={options[key]}" for key in sorted(options))


def is_built(folder: Path) -> bool:
    return (folder / MANIFEST).is_file()


def engine_files(folder: Path) -> set[str]:
    return {p.name for p in folder.glob("*.engine")}


@contextmanager
def build(folder: Path, key: EngineKey, lock_timeout_s: float = 3 * 3600) -> Iterator[Path | None]:
    """Build ``folder``'s engines once: yields a temporary folder to build into, or None when another
    builder finished them meanwhile (load from ``folder`` then). On a clean exit the temporary folder
    gets its manifest and is renamed to ``folder``; on an error it is removed. ``TimeoutError`` when
    another builder holds the lock longer than ``lock_timeout_s``."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f"{folder.name}.lock", "a+") as lock:
        waited = time.monotonic()
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() - waited > lock_timeout_s:
                    raise TimeoutError(f"another process has built {folder} for over {lock_timeout_s:.0f} s "
                                       f"(holding {lock.name})") from None
                time.sleep(1)
        try:
            if is_built(folder):
                yield None
                return
            tmp = folder.parent / f".{folder.name}.{os.getpid()}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            try:
                started = time.monotonic()
                yield tmp
                manifest = {**asdict(key), "files": sorted(p.name for p in tmp.iterdir()),
                            "built_s": round(time.monotonic() - started, 1), "built_at": time.time()}
                (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
                os.replace(tmp, folder) if not folder.exists() else _replace_incomplete(tmp, folder)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _replace_incomplete(tmp: Path, folder: Path) -> None:
    """``folder`` exists without a manifest (left by an older layout or by hand): replace it."""
    old = folder.parent / f".{folder.name}.{os.getpid()}.old"
    os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)
