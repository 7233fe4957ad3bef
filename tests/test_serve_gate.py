"""The bound on decoded pixels in flight (PixelGate) and the malloc arena cap of `lightseg serve`."""

from __future__ import annotations

import asyncio
import os
import platform
import subprocess
import sys

import pytest

from lightseg.errors import RequestError
from lightseg.serve.gate import PixelGate


def run(coro):
    return asyncio.run(coro)


def test_an_upload_waits_until_the_images_before_it_leave_room():
    async def scenario():
        gate, events = PixelGate(capacity=10, max_waiting=4), []

        async def upload(name: str, pixels: int, hold_s: float):
            async with gate.hold(pixels):
                events.append(f"{name} in (held {gate.held})")
                await asyncio.sleep(hold_s)
            events.append(f"{name} out")

        first = asyncio.create_task(upload("a", 6, 0.05))
        await asyncio.sleep(0.01)
        second = asyncio.create_task(upload("b", 6, 0))  # 6 + 6 > 10: waits for a
        await asyncio.sleep(0.01)
        assert gate.waiting == 1 and gate.held == 6
        await asyncio.gather(first, second)
        return events, gate

    events, gate = run(scenario())
    assert events == ["a in (held 6)", "a out", "b in (held 6)", "b out"]
    assert gate.held == 0 and gate.waiting == 0


def test_images_that_fit_together_go_in_together_and_one_larger_than_the_gate_runs_alone():
    async def scenario():
        gate, peak = PixelGate(capacity=10, max_waiting=4), []

        async def upload(pixels: int):
            async with gate.hold(pixels):
                peak.append(gate.held)
                await asyncio.sleep(0.02)

        await asyncio.gather(upload(4), upload(4))  # 8 <= 10: both at once
        together = max(peak)
        peak.clear()
        await asyncio.gather(upload(50), upload(1))  # 50 counts as the whole gate: the other waits
        return together, max(peak)

    assert run(scenario()) == (8, 10)


def test_beyond_max_waiting_the_answer_is_503_and_a_cancelled_waiter_leaves_nothing_behind():
    async def scenario():
        gate = PixelGate(capacity=10, max_waiting=1)
        release = asyncio.Event()

        async def holder():
            async with gate.hold(10):
                await release.wait()

        async def waiter():
            async with gate.hold(5):
                return "served"

        held = asyncio.create_task(holder())
        await asyncio.sleep(0.01)
        waiting = asyncio.create_task(waiter())
        await asyncio.sleep(0.01)
        with pytest.raises(RequestError) as refused:
            async with gate.hold(5):
                pass
        waiting.cancel()  # the client went away while waiting
        await asyncio.sleep(0.01)
        state = (gate.waiting, gate.held)
        release.set()
        await held
        after = await asyncio.create_task(waiter())
        return refused.value, state, after, gate.held

    refused, state, after, held = run(scenario())
    assert refused.status == 503 and refused.code == "busy" and "--max-queue" in str(refused)
    assert state == (0, 10) and after == "served" and held == 0


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt's arena cap is glibc's")
def test_the_malloc_arena_cap_takes_on_glibc_and_the_environment_wins():
    code = "from lightseg.serve.server import limit_malloc_arenas; print(limit_malloc_arenas())"
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    took = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    left = subprocess.run(
        [sys.executable, "-c", code],
        env={**env, "MALLOC_ARENA_MAX": "4"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert (took.stdout.strip(), left.stdout.strip()) == ("True", "False")


def test_the_gate_holds_a_batch_per_worker_of_8_mi_images_and_always_one_of_the_largest():
    from lightseg.serve.gate import SLOT_PIXELS, decoded_capacity

    assert SLOT_PIXELS == 8 * 2**20
    assert decoded_capacity(2, 4, 16 * 2**20) == 8 * SLOT_PIXELS  # a larger --max-pixels: same memory
    assert decoded_capacity(2, 4, 2**20) == 8 * 2**20  # small uploads only: a batch each of those
    assert decoded_capacity(1, 1, 16 * 2**20) == 16 * 2**20  # one of the largest still gets in
