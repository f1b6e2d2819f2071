"""The image pool with real worker processes (gateway/image_pool.py, gateway/image_worker.py),
without a server: pages come back resized and in order; a crash, a runaway page or a memory
blow-up fails only its own part, the tasks queued behind it still succeed (no BrokenProcessPool),
and the pool replaces the worker; a request's budget stops a worker cleanly, without a kill."""

from __future__ import annotations

import asyncio
import base64
import io
import time

import pytest
from PIL import Image

from core import pages as geometry
from core.errors import InvalidRequest, Unprocessable
from gateway import images
from gateway.image_pool import ImagePool, RequestBudget
from tests.support.hostile_files import runaway_pdf

pytestmark = pytest.mark.server

GRID = geometry.PageGrid(factor=28, min_pixels=3136, max_pixels=50176)  # the tiny ColQwen2's
LIMITS = images.ImageLimits(max_bytes=10**8, max_pixels=50_000_000)


def image_url(image: Image.Image, fmt: str = "PNG", params: str = "") -> str:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return f"data:image/{fmt.lower()}{params};base64,{base64.b64encode(buffer.getvalue()).decode()}"


def pdf_url(data: bytes) -> str:
    return "data:application/pdf;base64," + base64.b64encode(data).decode()


def part(url: str, kind: str = "image", pages=None, **extra) -> images.PartTask:
    return images.PartTask(kind=kind, url=url, pages=pages, param="input[0]", dpi=72, grid=GRID,
                           limits=LIMITS, **extra)


def resized(width: int, height: int) -> tuple[int, int, int]:
    """The array shape of a ``width`` x ``height`` image after the processor's resize."""
    return (*geometry.smart_resize(height, width, GRID), 3)


def budget(pages: int = 32) -> RequestBudget:
    return RequestBudget("input", pages, 10**9)


def three_page_pdf() -> bytes:
    pages = [Image.new("RGB", (200, 300), color) for color in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    buffer = io.BytesIO()
    pages[0].save(buffer, "PDF", save_all=True, append_images=pages[1:], resolution=72)
    return buffer.getvalue()


def run(scenario, **pool_options):
    """``scenario(pool)`` on a started pool (one worker unless given), then the pool closed."""
    async def main():
        options = {"workers": 1, "memory_bytes": 1024**3, "task_timeout_s": 30, "retry_after_s": 1,
                   "max_waiting": 64, **pool_options}
        pool = ImagePool(**options)
        await pool.start()
        try:
            return await scenario(pool)
        finally:
            await pool.close()

    return asyncio.run(main())


def pids(pool: ImagePool) -> set[int]:
    return {worker.process.pid for worker in pool._all}


async def replaced(pool: ImagePool, before: set[int], timeout: float = 30) -> float:
    """Seconds until the pool has as many live workers as before, none of them the lost one."""
    started = time.monotonic()
    while len(pids(pool)) < len(before) or pids(pool) & before == before:
        assert time.monotonic() - started < timeout, "the lost worker was not replaced"
        await asyncio.sleep(0.02)
    return time.monotonic() - started


def test_images_and_pdf_pages_come_back_resized_and_in_order():
    async def scenario(pool):
        image = await pool.run(part(image_url(Image.new("RGB", (600, 800), (1, 2, 3)))), budget())
        pages = await pool.run(part(pdf_url(three_page_pdf()), "file", (3, 1)), budget())
        return image, pages

    image, pages = run(scenario)
    assert [(n, a.shape) for n, a in image] == [(None, resized(600, 800))] and (image[0][1] == (1, 2, 3)).all()
    assert [n for n, _ in pages] == [3, 1]
    assert abs(int(pages[0][1][100, 80, 2]) - 255) <= 3 and abs(int(pages[1][1][100, 80, 0]) - 255) <= 3


def test_a_crash_fails_only_its_part_and_the_worker_is_replaced():
    """One worker: the three good parts queued behind the crashing one still succeed (with
    ProcessPoolExecutor they would all fail with BrokenProcessPool)."""
    crash = part(image_url(Image.new("RGB", (30, 40)), params=";fault=crash"), test_faults=True)
    good = part(image_url(Image.new("RGB", (30, 40), (9, 9, 9))))

    async def scenario(pool):
        before = pids(pool)
        results = await asyncio.gather(pool.run(crash, budget()), *(pool.run(good, budget()) for _ in range(3)),
                                       return_exceptions=True)
        return results, await replaced(pool, before), await pool.run(good, budget())

    results, recovery_s, after = run(scenario)
    assert isinstance(results[0], Unprocessable) and results[0].status == 422 and "SIGSEGV" in results[0].message
    assert all(isinstance(r, list) and r[0][1].shape == resized(30, 40) for r in results[1:]), results
    assert after[0][1].shape == resized(30, 40)
    assert recovery_s < 10


def test_the_fault_switch_is_off_unless_configured():
    quiet = part(image_url(Image.new("RGB", (30, 40)), params=";fault=crash"))

    async def scenario(pool):
        before = pids(pool)
        result = await pool.run(quiet, budget())
        return result, before == pids(pool)

    result, same_worker = run(scenario)
    assert result[0][1].shape == resized(30, 40) and same_worker


def test_a_runaway_page_is_stopped_at_its_deadline():
    async def scenario(pool):
        started = time.monotonic()
        with pytest.raises(Unprocessable) as info:
            await pool.run(part(pdf_url(runaway_pdf()), "file"), budget())
        stopped_after = time.monotonic() - started
        good = await pool.run(part(image_url(Image.new("RGB", (30, 40)))), budget())
        return info.value, stopped_after, good

    error, stopped_after, good = run(scenario, task_timeout_s=1.5)
    assert "longer than 1.5 s" in error.message and error.param == "input[0]"
    assert stopped_after < 5 and good[0][1].shape == resized(30, 40)


def test_an_image_past_the_memory_budget_fails_alone():
    big = part(image_url(Image.new("RGBA", (6000, 6000))))  # 36 Mpx: ~150 MB as RGBA, more to convert

    async def scenario(pool):
        before = pids(pool)
        with pytest.raises(Unprocessable) as info:
            await pool.run(big, budget())
        await replaced(pool, before)
        return info.value, await pool.run(part(image_url(Image.new("RGB", (30, 40)))), budget())

    error, good = run(scenario, memory_bytes=300 * 2**20)
    assert "more memory" in error.message and good[0][1].shape == resized(30, 40)


def test_a_request_budget_stops_a_worker_without_killing_it():
    async def scenario(pool):
        before = pids(pool)
        shared = budget(pages=2)
        first = await pool.run(part(pdf_url(three_page_pdf()), "file", (1, 2)), shared)
        with pytest.raises(InvalidRequest) as info:
            await pool.run(part(pdf_url(three_page_pdf()), "file", (3,)), shared)  # a third page in the request
        return first, info.value, pids(pool) == before

    first, error, same_worker = run(scenario)
    assert len(first) == 2 and error.code == "too_many_images" and error.param == "input" and same_worker


def test_a_worker_that_cannot_start_names_the_fix():
    with pytest.raises(RuntimeError, match="EMBED_IMAGE_WORKER_MEMORY_BYTES"):
        run(lambda pool: asyncio.sleep(0), memory_bytes=50 * 2**20)


def test_too_many_waiting_parts_get_429():
    from core.errors import Overloaded

    slow = part(pdf_url(runaway_pdf(2_000)), "file")  # about 1 s to render
    quick = part(image_url(Image.new("RGB", (30, 40))))

    async def scenario(pool):
        running = asyncio.ensure_future(pool.run(slow, budget()))
        await asyncio.sleep(0.1)  # the slow part holds the one worker
        waiting = asyncio.ensure_future(pool.run(quick, budget()))
        await asyncio.sleep(0.01)
        with pytest.raises(Overloaded) as info:
            await pool.run(quick, budget())
        return info.value, await running, await waiting

    error, slow_pages, quick_pages = run(scenario, max_waiting=1)
    assert error.status == 429 and error.headers == {"Retry-After": "1"}
    assert len(slow_pages) == 1 and len(quick_pages) == 1
