"""Decoding records on worker processes, for sinks that only need each event's JSON.

Decoding an Avro record into an event is most of the CPU an event costs the engine, and Python
runs it on one core at a time. A sink that reads nothing of an event but its delivered JSON
(``json_only = True``: the storage sink writes JSON Lines) lets the engine hand a lane's next
batch of records, as fetched, to ``decode_processes`` worker processes, which decode them, check
each event's tenant against the record key and return the JSON bytes. The event loop meanwhile
dispatches the next fetch and drives other lanes.

Nothing about delivery changes: a lane still takes its records in order, one batch at a time,
and they stay in its queue (where the commit point sees them) until the decoded batch comes
back. Records that do not decode, or that name another tenant, come back as the reason and
are dead-lettered in their place, as on the event loop. If a worker dies, the batches it held
are decoded on the event loop by their lanes, and a new worker is started (at once, then at
most once per ``_RESTART_SECONDS``).

Workers are started with ``spawn`` (librdkafka's threads make ``fork`` unsafe), ignore SIGINT
and SIGTERM (the parent decides when they stop: a terminal's Ctrl-C reaches the whole process
group, and the parent still drains), and are killed by the kernel if the parent dies first
(``PR_SET_PDEATHSIG``, Linux).
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import multiprocessing
import pickle
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import accumulate
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess

from streams.codec import AuditEventCodec
from streams.errors import DecodeError
from streams.event import AuditEvent, to_json_bytes

_log = logging.getLogger("streams.engine.decoding")

Decoded = bytes | tuple[str, str]
"""One record's outcome from a worker: its event's JSON, or ``(reason, error class)`` to
dead-letter it."""
Outcome = AuditEvent | Decoded
"""One record's outcome from ``decode_batch``: the event itself with ``to_json=False``."""

_PR_SET_PDEATHSIG = 1
_ROUND_RECORDS = 3000
"""Most records in one round (unless one job alone has more): small rounds keep the workers
and the event loop busy at the same time; one round of everything asked for left a worker
idle while the loop took in its large answer (bench/storage.py: 0.55x against 0.74x of the
ceiling into files, 300,000 events, two workers)."""
_RESTART_SECONDS = 10.0
"""Least time between two starts of a replacement worker."""


def decode_batch(
    codec: AuditEventCodec, values: Sequence[bytes], tenant_id: str, *, to_json: bool = True
) -> list[Outcome]:
    """Each record's JSON (or, without ``to_json``, its event), or why it is dead-lettered: a
    ``DecodeError``, or a tenant other than the record key's. Used by the workers and by
    ``Delivering._open`` on the event loop alike."""
    decode = codec.decode
    out: list[Outcome] = []
    append = out.append
    for value in values:
        try:
            event = decode(value)
        except DecodeError as exc:
            append((str(exc), type(exc).__name__))
            continue
        if event["tenant_id"] == tenant_id:
            append(to_json_bytes(event) if to_json else event)
        else:
            append(_tenant_mismatch(tenant_id, event["tenant_id"]))
    return out


def _tenant_mismatch(key_tenant: str, event_tenant: str) -> tuple[str, str]:
    """The dead-letter reason of a record whose event names another tenant than its key."""
    return (
        f"record key {key_tenant!r} does not match tenant_id {event_tenant!r}",
        "TenantMismatch",
    )


def _worker_main(conn: Connection, codec: AuditEventCodec) -> None:
    """A worker process: decode each round of jobs it is sent, answer with the outcomes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if sys.platform == "linux":
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    while True:
        try:
            jobs: list[tuple[str, list[bytes]]] = pickle.loads(conn.recv_bytes())  # noqa: S301
        except EOFError:  # the parent closed its end: stop
            return
        outcomes = [decode_batch(codec, values, tenant) for tenant, values in jobs]
        conn.send_bytes(pickle.dumps(outcomes, pickle.HIGHEST_PROTOCOL))


def round_size(sizes: Sequence[int], idle: int) -> int:
    """How many of the waiting jobs (``sizes``: records each, oldest first) go to the next of
    ``idle`` idle workers: an even share of them, cut after the job that reaches
    ``_ROUND_RECORDS`` records; at least one."""
    share = -(-len(sizes) // idle)  # ceil
    for n, total in enumerate(accumulate(sizes[:share]), 1):
        if total >= _ROUND_RECORDS:
            return n
    return share


class _Lost(Exception):
    """The worker holding a job died before it answered."""


_Job = tuple["asyncio.Future[list[Decoded]]", str, Sequence[bytes]]


@dataclass(eq=False)
class _Worker:
    process: BaseProcess
    conn: Connection
    jobs: list[_Job] | None = None
    """The round it is decoding (None: idle)."""


class DecodePool:
    """``processes`` worker processes that decode batches of records (see the module doc).

    Lanes ask on the event loop; the jobs asked for in one turn of the loop go to an idle
    worker together, as one message (a round), so a round trip costs the event loop one
    pickle and one pipe write however many lanes asked. A worker has one round at a time:
    it never writes an answer while the loop is still writing to it, so the loop's blocking
    write (to an idle worker) and read (of an answer the worker is writing) cannot deadlock.
    A version that wrote and read the pipes without blocking, as the loop found them ready,
    with two rounds per worker, was slower: an answer then came in over many turns of the loop
    (bench/storage.py, 3 alternating pairs: 0.57-0.62x of the ceiling against 0.67-0.70x).
    """

    def __init__(self, codec: AuditEventCodec, processes: int) -> None:
        self._codec = codec
        self._processes = processes
        self._context = multiprocessing.get_context("spawn")
        self._workers: list[_Worker] = []
        self._pending: list[_Job] = []
        self._flush_scheduled = False
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._next_restart = 0.0
        self.restarts = 0
        """Workers started again after one died."""

    def start(self) -> None:
        """Start the workers (call on the event loop; spawning takes a few hundred ms of the
        workers' own time, better before traffic)."""
        self._loop = asyncio.get_running_loop()
        while len(self._workers) < self._processes:
            self._spawn()

    def _spawn(self) -> None:
        assert self._loop is not None  # noqa: S101 - start() ran
        ours, theirs = self._context.Pipe(duplex=True)
        process = self._context.Process(
            target=_worker_main,
            args=(theirs, self._codec),
            name="siem-export-decoder",
            daemon=True,
        )
        process.start()
        theirs.close()
        worker = _Worker(process, ours)
        self._workers.append(worker)
        self._loop.add_reader(ours.fileno(), self._answered, worker)

    async def decode(self, values: Sequence[bytes], tenant_id: str) -> list[Decoded] | None:
        """The outcome of each record, in order; None if no worker could do it (one died, or
        the pool is closed): the caller then decodes on the event loop."""
        if self._closed or self._loop is None:
            return None
        if len(self._workers) < self._processes and time.monotonic() >= self._next_restart:
            self._next_restart = time.monotonic() + _RESTART_SECONDS
            self.restarts += 1
            self._spawn()
        if not self._workers:
            return None
        future: asyncio.Future[list[Decoded]] = self._loop.create_future()
        self._pending.append((future, tenant_id, values))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)
        try:
            return await future
        except _Lost:
            return None

    def _flush(self) -> None:
        """Send what was asked for to the idle workers, as one round each."""
        self._flush_scheduled = False
        self._pending = [job for job in self._pending if not job[0].done()]
        idle = [w for w in self._workers if w.jobs is None]
        while self._pending and idle:
            worker = idle.pop()
            share = round_size([len(job[2]) for job in self._pending], len(idle) + 1)
            jobs, self._pending = self._pending[:share], self._pending[share:]
            message = pickle.dumps([(t, list(v)) for _, t, v in jobs], pickle.HIGHEST_PROTOCOL)
            try:
                worker.conn.send_bytes(message)
            except OSError as exc:
                worker.jobs = jobs
                self._lost(worker, exc)
                continue
            worker.jobs = jobs

    def _answered(self, worker: _Worker) -> None:
        try:
            outcomes: list[list[Decoded]] = pickle.loads(worker.conn.recv_bytes())  # noqa: S301
        except (EOFError, OSError) as exc:
            self._lost(worker, exc)
            return
        jobs, worker.jobs = worker.jobs or [], None
        for (future, _, _), outcome in zip(jobs, outcomes, strict=True):
            if not future.done():
                future.set_result(outcome)
        if self._pending:
            self._flush()

    def _lost(self, worker: _Worker, exc: BaseException) -> None:
        """A worker died (or its pipe broke): its jobs are decoded by their lanes instead."""
        self._retire(worker)
        for future, _, _ in worker.jobs or []:
            if not future.done():
                future.set_exception(_Lost())
        worker.jobs = None
        if self._closed:
            return
        _log.error(
            "A decoding worker process stopped; its batches are decoded in the main process "
            "and a new worker is started.",
            extra={
                "error": f"{type(exc).__name__}: {exc}",
                "exitcode": worker.process.exitcode,
                "restarts": self.restarts,
            },
        )
        # Its replacement starts with the next batch asked for, at most once per
        # _RESTART_SECONDS (a worker that dies at once must not be respawned in a loop).

    def _retire(self, worker: _Worker) -> None:
        if worker in self._workers:
            self._workers.remove(worker)
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(worker.conn.fileno())
        worker.conn.close()
        if worker.process.is_alive():
            worker.process.kill()

    def close(self) -> None:
        """Stop the workers (call on the event loop; then ``join``). Batches still being
        decoded are abandoned: their records are still queued in their lanes."""
        self._closed = True
        for worker in list(self._workers):
            self._retire(worker)
            for future, _, _ in worker.jobs or []:
                if not future.done():
                    future.set_exception(_Lost())
        for future, _, _ in self._pending:
            if not future.done():
                future.set_exception(_Lost())
        self._pending = []

    def join(self, timeout: float = 5.0) -> None:
        """Wait for stopped workers to exit (blocking: run it in a thread)."""
        for child in self._context.active_children():
            if child.name == "siem-export-decoder":
                child.join(timeout)
