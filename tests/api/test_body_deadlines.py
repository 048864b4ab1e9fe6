"""The body-read deadline (api.deadlines): one timer per event loop instead of
``asyncio.timeout`` per read.

A read past its deadline is answered 408 and the task goes on; any other cancellation passes
through; reads with different timeouts on one loop each expire on time.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import uvloop
from starlette.requests import Request

from runstore.client.problems import RequestTimeout
from runstore.service.api import body
from runstore.service.api.deadlines import deadlines_of
from runstore.service.api.problems import problem_response

JSON_HEADERS = [(b"content-type", b"application/json")]


class Sender:
    """The ASGI receive of a client that sends its body when told to."""

    def __init__(self, payload: bytes = b'{"a":1}') -> None:
        self.payload = payload
        self.go = asyncio.Event()

    async def receive(self) -> dict[str, Any]:
        await self.go.wait()
        return {"type": "http.request", "body": self.payload, "more_body": False}

    def request(self) -> Request:
        return Request({"type": "http", "headers": JSON_HEADERS}, self.receive)


def clock() -> float:
    """The loop's clock, which deadlines are set on: uvloop's reads a time cached once per loop
    turn, so against time.monotonic a deadline can fall up to a millisecond early. Compared as
    ``began + seconds <= clock()``: ``clock() - began`` can round to just under ``seconds``."""
    return asyncio.get_running_loop().time()


def deadlines() -> Any:
    return deadlines_of(asyncio.get_running_loop())


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Any:
    return asyncio.run if request.param == "asyncio" else uvloop.run


def test_a_body_that_arrives_in_time_is_read(run: Any) -> None:
    async def main() -> None:
        sender = Sender()
        asyncio.get_running_loop().call_later(0.05, sender.go.set)
        assert await body.read_body(sender.request(), limit=1000, seconds=5) == b'{"a":1}'
        assert not deadlines()._waits
        assert not deadlines()._expired

    run(main())


def test_a_late_body_is_answered_408_and_the_task_goes_on(run: Any) -> None:
    async def main() -> None:
        task = asyncio.current_task()
        assert task is not None
        began = clock()
        with pytest.raises(RequestTimeout) as raised:
            await body.read_body(Sender().request(), limit=1000, seconds=0.2)
        assert raised.value.slug == "request-timeout"
        assert problem_response(raised.value).headers["connection"] == "close"
        assert began + 0.2 <= clock() < began + 2
        # Not left cancelling: the task can still await, to send its answer.
        assert task.cancelling() == 0
        await asyncio.sleep(0.01)
        assert not deadlines()._waits
        assert not deadlines()._expired

    run(main())


def test_another_cancellation_passes_through(run: Any) -> None:
    async def main() -> None:
        reader = asyncio.create_task(body.read_body(Sender().request(), limit=1000, seconds=5))
        await asyncio.sleep(0.05)
        reader.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reader
        assert not deadlines()._waits

    run(main())


@pytest.mark.parametrize("first", ["owner", "deadline"])
def test_a_cancellation_at_the_deadline_is_not_swallowed(run: Any, first: str) -> None:
    async def main() -> None:
        watched = deadlines()
        expire = watched._expire
        reader: asyncio.Task[bytes] | None = None

        def expire_and_cancel() -> None:
            # The owner cancels the read in the same loop turn as the deadline passes, before
            # or after the deadline's own cancellation.
            assert reader is not None
            if first == "owner":
                reader.cancel()
            expire()
            if first == "deadline":
                reader.cancel()

        watched._expire = expire_and_cancel  # the timer armed for the read calls this
        try:
            reader = asyncio.create_task(
                body.read_body(Sender().request(), limit=1000, seconds=0.1)
            )
            with pytest.raises(asyncio.CancelledError):
                await reader
        finally:
            del watched._expire
        assert not watched._waits
        assert not watched._expired

    run(main())


def test_each_read_expires_on_its_own_deadline(run: Any) -> None:
    async def read(seconds: float) -> tuple[float, float]:
        began = clock()
        with pytest.raises(RequestTimeout):
            await body.read_body(Sender().request(), limit=1000, seconds=seconds)
        return began, clock()

    def lasted(span: tuple[float, float], low: float, high: float) -> bool:
        began, ended = span
        return began + low <= ended < began + high

    async def main() -> None:
        # The long read arms the timer first; the short one, started later, must re-arm it.
        long = asyncio.create_task(read(1.0))
        await asyncio.sleep(0.05)
        short = asyncio.create_task(read(0.2))
        others = [asyncio.create_task(read(0.4)) for _ in range(3)]
        assert lasted(await short, 0.2, 0.6)
        for other in others:
            assert lasted(await other, 0.4, 0.9)
        assert lasted(await long, 1.0, 1.6)
        assert not deadlines()._waits

    run(main())


def test_reads_that_end_in_time_are_never_cancelled_later(run: Any) -> None:
    async def main() -> None:
        for _ in range(20):
            sender = Sender()
            sender.go.set()
            await body.read_body(sender.request(), limit=1000, seconds=0.1)
        task = asyncio.current_task()
        assert task is not None
        await asyncio.sleep(0.3)  # past every deadline; the timer finds nothing to cancel
        assert task.cancelling() == 0
        assert not deadlines()._expired

    run(main())
