"""The runtime's pipeline stages: a bounded reader thread (`background`), calls kept in flight on a
few threads with their results in order (`in_flight`) and a bounded consumer thread (`Worker`),
so reading, the model and merging overlap while memory stays bounded. Used twice over: within one
image (tiles read -> model lanes -> merger, `Predictor.tile_outputs`) and across the files of a
batch (file read -> segmentation -> products writer, `FileRunner.process_many`)."""

from __future__ import annotations

import contextlib
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

K = TypeVar("K")
X = TypeVar("X")
Y = TypeVar("Y")

_DONE = object()


class _Failure:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def background(items: Iterable, depth: int) -> Iterator:
    """Iterate `items` in a thread, at most `depth` ahead; exceptions surface in the consumer."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def work() -> None:
        try:
            for it in items:
                while not stop.is_set():
                    try:
                        q.put(it, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(_DONE)
        except BaseException as e:
            q.put(_Failure(e))

    t = threading.Thread(target=work, daemon=True, name="nseg-reader")
    t.start()
    try:
        while True:
            it = q.get()
            if it is _DONE:
                return
            if isinstance(it, _Failure):
                raise it.exc
            yield it
    finally:
        stop.set()
        with contextlib.suppress(queue.Empty):
            while True:
                q.get_nowait()
        t.join(timeout=5)


def in_flight(fn: Callable[[X], Y], items: Iterable[tuple[K, X]], lanes: int) -> Iterator[tuple[K, Y]]:
    """(key, fn(x)) for each (key, x) of `items`, in their order, with up to `lanes` calls of `fn`
    running at once on as many threads (for a `fn` that releases the GIL, such as a model call).
    Closing the iterator early waits for the calls under way and starts no more."""
    if lanes <= 1:
        for key, x in items:
            yield key, fn(x)
        return
    pending: deque = deque()
    with ThreadPoolExecutor(lanes, thread_name_prefix="nseg-model") as pool:
        try:
            for key, x in items:
                pending.append((key, pool.submit(fn, x)))
                if len(pending) == lanes:
                    key0, done = pending.popleft()
                    yield key0, done.result()
            while pending:
                key0, done = pending.popleft()
                yield key0, done.result()
        finally:
            for _, waiting in pending:
                waiting.cancel()


class Worker:
    """One consumer thread fed through a bounded queue; `close()` re-raises its first error."""

    def __init__(self, fn: Callable, depth: int, name: str = "nseg-merger") -> None:
        self.fn = fn
        self.q: queue.Queue = queue.Queue(maxsize=depth)
        self.error: BaseException | None = None
        self.t = threading.Thread(target=self._loop, daemon=True, name=name)
        self.t.start()

    def _loop(self) -> None:
        while (item := self.q.get()) is not _DONE:
            try:
                if self.error is None:
                    self.fn(item)
            except BaseException as e:
                self.error = e
            finally:
                self.q.task_done()

    def wait(self) -> None:
        """Block until every item put so far has been handled (the consumer is idle)."""
        self.q.join()

    def put(self, item) -> None:
        if self.error is not None:
            raise self.error
        self.q.put(item)

    def close(self) -> None:
        self.q.put(_DONE)
        self.t.join()
        if self.error is not None:
            raise self.error
