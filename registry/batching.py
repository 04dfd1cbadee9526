"""Per-version dynamic batching on a dedicated inference thread, or inline when cheaper.

What a request holds and how a pass combines them is the caller's (``LoadedModel`` runs
its handler's hooks); the batcher only knows each request's row count.

A lone request runs at once; requests that arrive while a forward pass runs wait in a
bounded queue and the next pass takes as many as fit in ``max_batch_size`` rows. So there
is no added latency when idle and full batches under load, without a timer to tune.

One refinement keeps batches full under steady load: clients that just got their answers
send the next request a fraction of a millisecond later, so a pass that starts on the
first of them would run nearly alone and make the rest wait a whole pass. When the last
pass was a batch, the next one lingers until as many rows have arrived, for at most a
tenth of that pass (``LINGER_SHARE``), or ``LINGER_CAP_S`` when that is longer, and never
more than half of it. After a lone request it never waits, so light traffic sees no
delay. An explicit ``max_delay_ms`` replaces this with a fixed wait.

The thread blocks on a ``SimpleQueue`` and hands each batch's results back to the event
loop with one ``call_soon_threadsafe``: two thread hand-offs per batch, none per row.

A version may run several passes at once (``instances``): as many inference threads take
their batches from the one queue, each gathering while the others compute. On a CPU where
the serving work (reading requests, writing answers, tokenizing) shares the cores with
the forward passes, one pass computing while the next is gathered and the last answered
keeps the cores busy. The first instance takes every batch it can; the others take one
only while it is busy with one (``registry.instances`` says why). A pass takes at most
its instance's share of ``max_batch_size`` (rounded up): were one to take all that waits,
under steady load it would hold most clients in its passes while another ran the few left
over, a row or two at a time, for a core's worth of work each. Before each pass the
batcher says how many passes are running, counting waiting work as one more, and whether
this pass may run on several threads (``share``); the model sets torch's threads from
that: such a pass gets them all less one for each other pass, the others one each. With
one instance, work waiting counts the same: while requests queue behind a pass the event
loop is busy reading them and answering the last batch, and a pass on every core would
take the loop's.

Only the first instance's passes may run on several threads, only once its thread's passes
have shown they are long enough to gain from them (``PassWidth``: a short pass gains
nothing, and leaves an OpenMP worker spinning), and only while its thread holds one of the
process's few permits (``WideThreads``, ``registry.threads`` says why), taken at such a
pass when one is free. A thread that holds one ends, to free it, and starts a successor
that takes its place, while another thread was refused one and either this one has been
idle for ``HAND_ON_AFTER_S`` or its passes no longer gain from several threads.

For a tiny model those two hand-offs cost more than the forward pass itself, so a lone
one-row request of a version whose passes have proven short runs inline, on the event
loop, instead (``registry.inline`` says when). Both sides run ``_compute``, so a
failure is the same ``ModelFailed``, logged the same way, wherever the pass ran.

A pass of several requests that fails as a whole runs each of them again alone: one
request's rows (an index out of range, say) must not fail the others that shared its
pass. When they all fail alone too, the model fails whatever it is given, and its next
failed passes are not split until one succeeds.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from queue import Empty, SimpleQueue
from typing import Any, Generic, TypeVar

import numpy as np
import numpy.typing as npt
from opentelemetry.trace import SpanContext

from registry import tracing
from registry.deadlines import Deadlines
from registry.errors import InferenceTimeout, ModelFailed, QueueFull, ShuttingDown
from registry.inline import InlineGate
from registry.instances import FirstInstanceQueue
from registry.keys import VersionKey
from registry.manifest import BatchingSpec
from registry.threads import WIDE_AFTER_S, PassWidth, WideThreads

log = logging.getLogger(__name__)

Array = npt.NDArray[Any]
Tensors = dict[str, Array]
"""Named arrays, each with the rows of one request (or of a batch) on its first axis."""
In = TypeVar("In")
Out = TypeVar("Out")
RunBatch = Callable[[list[In]], Sequence[Out | Exception]]
"""One forward pass for several requests' inputs: each request's outputs, or the error
that fails that request alone (an error raised fails them all)."""


def concatenated(forward: Callable[[Array], Array]) -> RunBatch[Array, Array]:
    """A batch function for requests that are plain arrays: one ``forward`` on all their
    rows at once, its output split back into each request's rows."""

    def run(requests: list[Array]) -> list[Array | Exception]:
        if len(requests) == 1:
            return [forward(requests[0])]
        sizes = [len(rows) for rows in requests]
        outputs = forward(np.concatenate(requests))
        if len(outputs) != sum(sizes):
            raise ValueError(f"output batch {len(outputs)} != input batch {sum(sizes)}")
        return list(np.split(outputs, np.cumsum(sizes)[:-1]))

    return run


@dataclass(slots=True)
class _Pending(Generic[In, Out]):
    inputs: In
    rows: int
    result: asyncio.Future[Out]
    queued_at: float  # perf_counter() when submitted: its wait in the queue, its hand-off
    alone: bool  # handed to an idle thread: its round trip times the hand-off
    traced: Traced  # its span and when it was queued, while tracing is on


Share = Callable[[int, bool], object]
"""Told before each pass how many passes run now, this one included, plus one when work
waits in the queue (another instance is about to take it), and whether this pass may run
on several threads; and, at each inference thread's start, 1 and the same."""
PassObserver = Callable[[int, float, Sequence[float]], object]
"""Told of each pass, inline or on the thread: its rows, its seconds, and how long each of
its requests waited in the queue before it began."""
_NO_WAIT = (0.0,)


Traced = tuple[SpanContext, int] | None


LINGER_CAP_S = 0.002
LINGER_SHARE = 0.1
"""How long, as a share of the last batch's pass, the next pass may wait for its rows.

NOTE: a fixed 2 ms is plenty where a pass takes a few: the answers go back and the
clients' next requests arrive well within it. Behind a pass of 64 sentences through a
transformer (~450 ms here) the event loop spends several milliseconds writing 64 answers
and reading 64 requests; at 2 ms the first request back ran a pass alone (a tenth of the
batch's time for one row) while the other 63 waited behind it, every other pass. Waiting
up to a tenth of a pass costs at most that share of latency, and only right after a batch."""

HAND_ON_AFTER_S = 0.5
"""How long a thread holding a ``WideThreads`` permit waits idle before it ends to hand
the permit on, when another thread was refused one.

NOTE: long enough that a model under load keeps it between its requests (ending costs a
new thread and new OpenMP workers, well under a millisecond), short enough that a model
that went quiet does not keep another on one thread for long."""


class Batcher(Generic[In, Out]):
    """One inference thread per model version (or ``instances`` of them), fed by the
    event loop.

    ``submit`` may be cancelled (a client timeout): the request is then skipped if still
    queued, or its share of the output discarded if already running. A request that runs
    inline cannot be cancelled midway: it never yields to the loop.
    """

    def __init__(
        self,
        run: RunBatch[In, Out],
        config: BatchingSpec,
        *,
        key: VersionKey,
        rows_of: Callable[[In], int] = len,  # type: ignore[assignment]
        inline_max_s: float | None = None,
        on_pass: PassObserver | None = None,
        instances: int = 1,
        share: Share | None = None,
        wide: WideThreads | None = None,
        wide_after_s: float = WIDE_AFTER_S,
    ) -> None:
        """``wide``: the permits the first instance needs to run passes on several
        threads; without them it always may, once ``PassWidth(wide_after_s)`` says so."""
        if instances < 1:
            raise ValueError(f"instances must be at least 1, not {instances}")
        self._instances = instances
        self._share = share
        self._wide = wide
        self._holds_permit = False  # NOTE: the first instance's thread, or its successor
        # NOTE: with one instance the count its thread set at its start always holds
        self._shares_each_pass = instances > 1 and share is not None
        self._running = 0  # passes running now on the instances' threads, for ``share``
        self._running_lock = threading.Lock()
        self._run_batch = run
        self._pass_rows = -(-config.max_batch_size // instances)  # NOTE: see the docstring
        self._rows_of = rows_of
        self._on_pass = on_pass
        self._config = config
        self._key = key
        # NOTE: None stops a thread. Several instances give every lone batch to the first.
        self._queue: SimpleQueue[_Pending[In, Out] | None] | FirstInstanceQueue[_Pending[In, Out]]
        self._queue = SimpleQueue() if instances == 1 else FirstInstanceQueue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._threads: list[threading.Thread] = []  # NOTE: a successor replaces its first
        self._threads_lock = threading.Lock()
        self._closed = False
        self._last_rows = 1  # inference threads' state: the size and cost of the last pass
        self._last_forward_s = 0.0
        self._failing = False  # NOTE: a failed pass's requests all failed alone too
        self._wide_after_s = wide_after_s
        # NOTE: only the loop writes this one, so it needs no lock: +1 when a request is
        # handed to the thread, -1 when its answer (or its skipping) comes back.
        self._handed = 0
        self._inline = InlineGate(inline_max_s)
        self._deadlines = Deadlines("inference deadline")

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

    def start(self) -> None:
        """Start the inference threads; results go back to the running loop."""
        self._loop = asyncio.get_running_loop()
        for index in range(self._instances):
            name = f"infer-{self._key}" + (f"-{index}" if self._instances > 1 else "")
            thread = threading.Thread(target=self._work, args=(index == 0,), name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    async def submit(self, inputs: In, timeout_s: float | None = None) -> Out:
        """Queue a request's instances and wait for their outputs.

        Past ``timeout_s`` the wait ends in ``InferenceTimeout`` (504) and the request is
        skipped if still queued; an inline pass, which never waits, always finishes.
        """
        if self._closed or self._loop is None:
            raise ShuttingDown(self._key)
        rows = self._rows_of(inputs)
        if self._inline.allows(rows, self._handed):
            return self._run_inline(inputs, self._loop)
        if self._queue.qsize() >= self._config.max_queue:
            raise QueueFull(self._key, self._queue.qsize(), self._config.max_queue)
        result: asyncio.Future[Out] = self._loop.create_future()
        alone = self._handed == 0
        self._handed += 1
        self._queue.put(
            _Pending(inputs, rows, result, time.perf_counter(), alone, tracing.current())
        )
        if timeout_s is None:
            return await result
        deadlines = self._deadlines
        task = deadlines.watch(deadlines.after(timeout_s))
        try:
            return await result
        except asyncio.CancelledError:
            if deadlines.timed_out(task):
                raise InferenceTimeout(self._key, timeout_s) from None
            raise
        finally:
            deadlines.unwatch(task)

    async def stop(self) -> None:
        """Fail what is still queued, let running passes deliver, then end the threads,
        and give back the permit the first one held."""
        self._closed = True
        if self._threads:
            for _ in self._threads:
                self._queue.put(None)  # NOTE: one each: a thread ends on the first it takes
            joined: list[threading.Thread] = []
            while joined != self._threads:  # NOTE: a first instance may hand on meanwhile
                with self._threads_lock:
                    joined = list(self._threads)
                for thread in joined:
                    await asyncio.to_thread(thread.join)
            if self._holds_permit and self._wide is not None:
                self._wide.give_back()  # NOTE: its holder has ended, and its workers with it
                self._holds_permit = False
            await asyncio.sleep(0)  # NOTE: run the deliveries the threads scheduled last
        self._threads = []
        self._loop = None

    def _run_inline(self, inputs: In, loop: asyncio.AbstractEventLoop) -> Out:
        """On the loop: the pass itself, answered or failed exactly as the thread would."""
        self._inline.entered(loop)
        outcome = self._compute([inputs], 1, _NO_WAIT, (tracing.current(),))
        if isinstance(outcome, BaseException):
            raise outcome
        answer = outcome[0]
        if isinstance(answer, Exception):
            raise answer
        return answer

    def _work(self, first_instance: bool, predecessor: threading.Thread | None = None) -> None:
        """An inference thread: gather a batch, run it, deliver, until stopped.

        Of several instances, the first takes any batch and opens the queue to the others
        while it is busy with it, gathering to delivering; they take one only then
        (``registry.instances``). A successor first waits for its predecessor's end, and
        then gives back the permit it held (see the module docstring).
        """
        if predecessor is not None and self._wide is not None:
            predecessor.join()  # NOTE: its OpenMP workers end with it
            self._holds_permit = False
            self._wide.give_back()
        # NOTE: whether this thread may run passes on several threads: it holds a permit,
        # or there are none to hold; whether it does is PassWidth's to say, pass by pass
        permitted = first_instance and self._wide is None
        width = PassWidth(self._wide_after_s)
        # NOTE: what this thread's torch count is set for: ``share``'s two arguments
        set_for = (1, permitted and width.several())
        if self._share is not None:
            # NOTE: a new thread would otherwise take what was set last
            self._share(*set_for)
        queue = self._queue
        take: Callable[[], _Pending[In, Out] | None] = queue.get
        leader: FirstInstanceQueue[_Pending[In, Out]] | None = None
        if isinstance(queue, FirstInstanceQueue):
            take = queue.get if first_instance else queue.get_beside_first
            leader = queue if first_instance else None
        carry: _Pending[In, Out] | None = None
        while True:
            first = carry if carry is not None else self._next(take, holding=permitted)
            if first is None:  # stopped, or handed on
                return
            if leader is not None:
                leader.first_busy(True)
            batch, carry, stop = self._gather(first)
            several = first_instance and width.several()
            if several and not permitted:
                permitted = self._take_permit()
            several = several and permitted
            if self._share is not None and not self._shares_each_pass:
                # NOTE: one instance: told only when it changes, and a pass on one thread
                # needs no count
                wanted = (self._passes(1) if several else 1, several)
                if wanted != set_for:
                    self._share(*wanted)
                    set_for = wanted
            computing_from = time.thread_time()
            live, outcome = self._run(batch, several)
            width.ran(several, time.thread_time() - computing_from)
            if leader is not None:
                # NOTE: before delivering: a client answered may send its next request at
                # once, and it is the first instance's to take
                leader.first_busy(False)
            assert self._loop is not None  # noqa: S101 (set before the threads start)
            self._loop.call_soon_threadsafe(self._deliver, batch, live, outcome)
            if stop:
                return
            if permitted and carry is None and self._permit_wanted_elsewhere(width):
                self._hand_on()
                return

    def _next(
        self, take: Callable[[], _Pending[In, Out] | None], holding: bool
    ) -> _Pending[In, Out] | None:
        """The next request to start a batch with; None to end this thread: stopped, or,
        for a thread holding a permit, idle for ``HAND_ON_AFTER_S`` while one is wanted."""
        permits = self._wide
        if not holding or permits is None:
            return take()
        while True:
            try:
                return self._queue.get(timeout=HAND_ON_AFTER_S)
            except Empty:
                if permits.wanted:
                    self._hand_on()
                    return None

    def _permit_wanted_elsewhere(self, width: PassWidth) -> bool:
        """Whether this thread should end now to free its permit: its passes no longer
        gain from it and another thread wants one (waiting for this one to idle could
        take for ever under steady load)."""
        return not width.gains and self._wide is not None and self._wide.wanted

    def _take_permit(self) -> bool:
        """Whether the first instance now holds a permit: a free one is taken."""
        if self._wide is None or not self._wide.try_take():
            return False
        self._holds_permit = True
        return True

    def _hand_on(self) -> None:
        """End this thread, to free its permit, and start the successor that takes its
        place and gives the permit back once this thread has ended."""
        current = threading.current_thread()
        successor = threading.Thread(
            target=self._work, args=(True, current), name=current.name, daemon=True
        )
        with self._threads_lock:
            # NOTE: started under the lock: ``stop`` joins what it finds listed, and a
            # thread not yet started cannot be joined
            self._threads[self._threads.index(current)] = successor
            successor.start()

    def _gather(
        self, first: _Pending[In, Out]
    ) -> tuple[list[_Pending[In, Out]], _Pending[In, Out] | None, bool]:
        """``first`` plus what is queued and fits; returns the batch, a carry-over, stop."""
        batch, rows = [first], first.rows
        limit = self._pass_rows
        if self._config.max_delay_ms:
            wanted, linger_s = limit, self._config.max_delay_ms / 1000
        else:
            wanted = min(limit, self._last_rows)
            last = self._last_forward_s
            linger_s = min(last / 2, max(LINGER_CAP_S, last * LINGER_SHARE))
        deadline = time.monotonic() + linger_s
        while rows < limit:
            if rows >= wanted:
                deadline = 0.0  # enough rows: take only what is already queued
            try:
                wait = deadline - time.monotonic()
                queued = self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait()
            except Empty:
                break
            if queued is None:  # the stop sentinel
                return batch, None, True
            if rows + queued.rows > limit:
                return batch, queued, False
            batch.append(queued)
            rows += queued.rows
        return batch, None, False

    def _run(
        self, batch: list[_Pending[In, Out]], several: bool
    ) -> tuple[list[_Pending[In, Out]], Sequence[Out | Exception] | BaseException]:
        """On an inference thread: one forward pass for the batch; its live requests and
        the outcome, for the loop.

        Even a batch whose requests were all cancelled reports back, so that the loop's
        count of what the threads hold drops to zero.
        """
        live = [p for p in batch if not p.result.done()]  # NOTE: cancelled while queued
        outcome: Sequence[Out | Exception] | BaseException
        if self._closed:
            outcome = ShuttingDown(self._key)
        elif not live:
            outcome = []
        else:
            started = time.perf_counter()
            rows = sum(p.rows for p in live)
            waits = [started - p.queued_at for p in live]
            traced = [p.traced for p in live]
            self._begin_pass(several)
            outcome = self._compute([p.inputs for p in live], rows, waits, traced)
            self._end_pass()
            if not isinstance(outcome, BaseException):  # NOTE: the linger's evidence
                self._last_forward_s = time.perf_counter() - started
                self._last_rows = rows
        return live, outcome

    def _begin_pass(self, several: bool) -> None:
        """With several instances, tell ``share`` how many passes run now or are about to,
        and whether this one may run on several threads."""
        if self._share is None or not self._shares_each_pass:
            return
        with self._running_lock:
            self._running += 1
            running = self._running
        self._share(self._passes(running), several)

    def _passes(self, running: int) -> int:
        """``running`` passes, plus one while work waits in the queue.

        NOTE: waiting work is requests the event loop reads and answers meanwhile, and
        with several instances a pass about to start: under load the first instance then
        runs on fewer threads, instead of on all of them, spinning at every region
        against the loop and the pass that starts next.
        """
        return running + 1 if self._queue.qsize() else running

    def _end_pass(self) -> None:
        if self._shares_each_pass:
            with self._running_lock:
                self._running -= 1

    def _compute(
        self,
        inputs: list[In],
        rows: int,
        waits: Sequence[float],
        traced: Sequence[Traced],
    ) -> Sequence[Out | Exception] | ModelFailed:
        """One forward pass for these requests, on whichever thread calls it; never raises.

        Every pass is timed, failed or not, and reported with its requests' ``waits``; a
        one-row pass is also evidence for ``InlineGate``. While tracing is on, the
        pass and the requests' waits become spans (``tracing.record_pass``).
        """
        traced_from = time.time_ns() if tracing.TRACER is not None else 0
        started = time.perf_counter()
        try:
            outcome = self._answers(inputs)
            if not isinstance(outcome, ModelFailed):
                self._failing = False
            elif len(inputs) > 1 and not self._failing:
                # NOTE: one request's rows may be what fails the pass: each runs alone, so
                # that it fails alone. Should every one fail alone too, the model fails
                # whatever it is given, and is not split again until a pass succeeds.
                outcome = [self._alone(one) for one in inputs]
                self._failing = all(isinstance(one, ModelFailed) for one in outcome)
            return outcome
        finally:
            seconds = time.perf_counter() - started
            if rows == 1:
                self._inline.lone_pass(seconds)
            if self._on_pass is not None:
                self._on_pass(rows, seconds, waits)
            if traced_from:
                tracing.record_pass(self._key, rows, traced, traced_from, time.time_ns())

    def _answers(self, inputs: list[In]) -> Sequence[Out | Exception] | ModelFailed:
        """The pass itself: an answer or an error per request, or the whole pass failed.

        NOTE: ``SystemExit`` too: model code that calls ``sys.exit`` would otherwise end the
        inference thread without a word (``threading`` drops it), leaving its requests
        unanswered and every later one to time out. (``KeyboardInterrupt`` is the main
        thread's, which uvicorn's signal handlers keep from being raised.)
        """
        try:
            outcome = self._run_batch(inputs)
            if len(outcome) != len(inputs):
                raise ValueError(f"{len(outcome)} answers for {len(inputs)} requests")
        except (Exception, SystemExit):
            log.exception("inference failed", extra={"model": str(self._key)})
            return ModelFailed(self._key)
        return outcome

    def _alone(self, inputs: In) -> Out | Exception:
        """One request of a failed pass, in a pass of its own: its answer, or its error."""
        outcome = self._answers([inputs])
        return outcome if isinstance(outcome, ModelFailed) else outcome[0]

    def _deliver(
        self,
        batch: list[_Pending[In, Out]],
        live: list[_Pending[In, Out]],
        outcome: Sequence[Out | Exception] | BaseException,
    ) -> None:
        """On the event loop: resolve each waiter that is still waiting."""
        self._handed -= len(batch)
        if len(batch) == len(live) == 1 and live[0].rows == 1 and live[0].alone:
            self._inline.lone_round_trip(time.perf_counter() - live[0].queued_at)
        if isinstance(outcome, BaseException):
            for pending in batch:
                if not pending.result.done():
                    pending.result.set_exception(outcome)
            return
        for pending, output in zip(live, outcome, strict=True):
            if pending.result.done():  # the client may have given up
                continue
            if isinstance(output, Exception):
                pending.result.set_exception(output)
            else:
                pending.result.set_result(output)
