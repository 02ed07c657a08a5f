"""A first-come-first-served waiting queue with O(1) add, pop and cancel.

Cancelled requests stay in the deque and are skipped when they reach the front
(their state is no longer WAITING).  Preempted requests go back to the front,
so they keep their place ahead of later arrivals.
"""

from __future__ import annotations

from collections import deque

from .request import Request, RequestState


class FifoQueue:
    def __init__(self):
        self._q: deque[Request] = deque()
        self.count = 0

    def __len__(self) -> int:
        return self.count

    def push(self, req: Request, front: bool = False) -> None:
        (self._q.appendleft if front else self._q.append)(req)
        self.count += 1

    def discard(self, req: Request) -> None:
        """A waiting request left (cancel); its entry is skipped later."""
        self.count -= 1

    def _clean(self) -> None:
        q = self._q
        while q and q[0].state is not RequestState.WAITING:
            q.popleft()

    def peek(self) -> Request | None:
        self._clean()
        return self._q[0] if self._q else None

    def pop(self) -> Request:
        self._clean()
        self.count -= 1
        return self._q.popleft()


class FifoWaiting:
    """Mixin for schedulers whose waiting requests sit in one `self.queue` (a FifoQueue)."""

    queue: FifoQueue

    def _enqueue(self, req: Request, requeue: bool) -> None:
        self.queue.push(req, front=requeue)

    def _dequeue(self, req: Request) -> None:
        self.queue.discard(req)

    def _num_waiting(self) -> int:
        return len(self.queue)
