"""Checkpoints from the Hugging Face hub (``hf:<repo>`` sources), as ``python -m export ensure``
downloads them: one hub commit, with progress, resumable, and checked against its pin.

- ``download(repo, revision)`` resolves ``revision`` (a branch, tag or commit; default ``main``) to
  its commit, prints what it fetches (files, bytes, where), downloads that commit with
  ``huggingface_hub.snapshot_download`` and reports progress as plain lines (``DownloadProgress``:
  every 10 seconds and at the end, readable in a log or in `make`'s output). huggingface_hub keeps a
  partial file as ``.incomplete`` and resumes it with an HTTP range request, after a cut connection
  within the same run and in the next run. ``HF_TOKEN`` (gated or private repositories), ``HF_HOME``
  (where the cache lives) and ``HF_ENDPOINT`` (a mirror) are huggingface_hub's own settings and
  apply as they are.
- ``pin_problem(spec)``: a pinned ``hf:`` model records the hub commit it was exported from
  (``registry.lock``'s ``revision``, beside the content hash). Before a pinned model is exported
  again, the registry's revision is resolved on the hub: when it now names another commit, the
  export stops, naming both, instead of downloading what is not the pinned model.

Every failure is a ``SourceError`` naming the repository and the fix.
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from export.sources import SourceError

COMMIT = re.compile(r"^[0-9a-f]{40}$")
DEFAULT_REVISION = "main"


def size_text(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError


class DownloadProgress(tqdm):
    """huggingface_hub's byte progress as plain lines on stderr (a log, `make`'s output): written
    bytes of the total with the rate, at most one line per ``interval_s`` and one at the end. Its
    other bars (files fetched; the network transfer, the same bytes again over HTTP) stay silent."""

    interval_s = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.pop("name", None)  # huggingface_hub names its own bars; tqdm itself refuses the keyword
        kwargs.update(file=sys.stderr, dynamic_ncols=False)
        self._shown_at = 0.0
        super().__init__(*args, **kwargs)
        self._bytes = self.unit == "B" and not (self.desc or "").startswith("Downloading bytes")

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        if getattr(self, "_bytes", False) and self.total and 0 < self.n < self.total and \
                time.monotonic() - self._shown_at >= self.interval_s:
            self._line()
        return True

    def _line(self) -> None:
        self._shown_at = time.monotonic()
        rate = self.format_dict.get("rate")
        print(f"  {size_text(self.n)} of {size_text(self.total)} ({100 * self.n / self.total:.0f}%)"
              + (f", {size_text(rate)}/s" if rate else ""), file=sys.stderr, flush=True)

    def close(self) -> None:
        if not self.disable and self._bytes and self.total and self.n >= self.total:
            self._line()
        self.disable = True  # tqdm's own close then writes nothing
        super().close()


def _hub_error(repo: str, exc: Exception) -> SourceError:
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    first_line = next(iter(str(exc).strip().splitlines()), "")
    if isinstance(exc, GatedRepoError) or getattr(getattr(exc, "response", None), "status_code", None) in (401, 403):
        fix = ("it needs a token: set HF_TOKEN (a read token of an account that accepted the model's terms on the "
               "hub) and run again")
    elif isinstance(exc, RevisionNotFoundError):
        fix = "the registry's `revision` is not on the hub: fix it"
    elif isinstance(exc, RepositoryNotFoundError):
        fix = "no such repository, or a private one: check the source, or set HF_TOKEN"
    else:
        fix = ("without network access to the hub (or HF_ENDPOINT's mirror), download the folder elsewhere and pass "
               "its path as the source; a partial download resumes when run again")
    return SourceError(f"source hf:{repo}: cannot download from the Hugging Face hub ({type(exc).__name__}: "
                       f"{first_line}); {fix}")


def resolve(repo: str, revision: str | None) -> tuple[str, list[tuple[str, int | None]]]:
    """(the commit ``revision`` names on the hub now, [(file, bytes)] of that commit)."""
    import httpx2
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError

    try:
        info = HfApi().model_info(repo, revision=revision or DEFAULT_REVISION, files_metadata=True)
    except (HfHubHTTPError, HFValidationError, OSError, httpx2.HTTPError) as exc:
        raise _hub_error(repo, exc) from None
    return info.sha, [(s.rfilename, s.size) for s in info.siblings or ()]


def download(repo: str, revision: str | None) -> tuple[Path, str]:
    """Download the commit ``revision`` names (default ``main``) into huggingface_hub's cache
    (``HF_HOME``), with progress; returns (its snapshot folder, the commit)."""
    import httpx2
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError

    commit, files = resolve(repo, revision)
    total = sum(size or 0 for _, size in files)
    named = "" if revision == commit else f"{revision or DEFAULT_REVISION} = "
    print(f"\ndownloading hf:{repo} at {named}commit {commit} ({len(files)} files, {size_text(total)}) into "
          f"{constants.HF_HUB_CACHE}; an interrupted download resumes where it stopped", file=sys.stderr, flush=True)
    try:
        folder = snapshot_download(repo, revision=commit, tqdm_class=DownloadProgress)
    except (HfHubHTTPError, HFValidationError, OSError, httpx2.HTTPError) as exc:
        raise _hub_error(repo, exc) from None
    return Path(folder), commit


def is_hub(spec) -> bool:
    return (spec.source or "").startswith("hf:")


def pin_problem(spec) -> str | None:
    """Why pinned ``hf:`` model ``spec`` must not be exported again from the hub as it is now: its
    pin records no hub commit, or the registry's revision (default ``main``) names another commit
    than the pinned one. None when it may (or when it is no pinned ``hf:`` model)."""
    if spec.pin is None or not is_hub(spec):
        return None
    repo = spec.source.removeprefix("hf:")
    pinned = spec.pin.revision or ""
    if not COMMIT.match(pinned):
        return (f"model {spec.name}: registry.lock pins its content but records no hub commit (revision "
                f"{pinned or 'none'!r}), so the hub's current files cannot be checked against it: pin it again "
                f"from an export of hf:{repo} (`python -m export pin {spec.name}`)")
    wanted = spec.revision or DEFAULT_REVISION
    commit, _ = resolve(repo, wanted)
    if commit == pinned:
        return None
    return (f"model {spec.name}: the hub's {wanted} of {repo} is now commit {commit}, but registry.lock pins the "
            f"export of commit {pinned} (content {spec.pin.digest[:19]}...). To keep the pinned model, set `revision: "
            f"{pinned}` on it in the registry (the hub keeps old commits); to move to the new commit, review it, "
            f"delete its entry from registry.lock, run `python -m export ensure` and pin the result "
            f"(`python -m export pin {spec.name}`)")
