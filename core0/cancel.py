"""Work in a worker thread stops when the job that started it is cancelled.

A handler's blocking work (a download, an image unpacked, a tree chowned) runs in a thread
(:meth:`core0.context.Context.to_thread`). Cancelling the handler's task (``job.kill``,
``max_time``, the dispatcher stopping) cannot stop a thread, so without this the work went on
to its end after the job had answered KILLED: a killed ``web.download`` still renamed its
file into place, a killed image import still appeared, and the dispatcher's exit waited for
them (asyncio's runner joins its worker threads).

:func:`in_thread` runs a function in a thread with a token of its own (a context variable:
``asyncio.to_thread`` runs the function in a copy of the caller's context) and sets the token
when the awaiting task is cancelled. The loops of long work call :func:`check` at each step
(a chunk copied, an archive member, a file chowned), which raises :class:`Cancelled` once the
token is set; the work then unwinds through its own clean-up (temporary files removed, no
rename). A step blocked in a read ends at that read's own timeout (30 s for a URL).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import inspect
import threading
import weakref
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from contextvars import ContextVar
from typing import Any, TypeVar

T = TypeVar("T")

_TOKEN: ContextVar[threading.Event | None] = ContextVar("core0_cancel", default=None)


class Cancelled(Exception):
    """Raised by :func:`check` in a worker thread whose job was cancelled."""


def check() -> None:
    """Raise :class:`Cancelled` if the job this thread works for was cancelled (nothing
    outside :func:`in_thread`)."""
    token = _TOKEN.get()
    if token is not None and token.is_set():
        raise Cancelled("cancelled")


async def in_thread(fn: Callable[..., T], *args: Any, wait: bool = False,
                    pool: Executor | None = None) -> T:
    """``fn(*args)`` in a worker thread (of ``pool``, or the loop's default executor); if
    the awaiting task is cancelled, the thread's :func:`check` calls raise from then on.
    ``wait``: the cancelled task still waits for the thread to end before it goes on (work
    that holds something the caller releases after it, e.g. a disk slot being written); by
    default it does not."""
    token = threading.Event()
    ctx = contextvars.copy_context()  # the caller's, with the token set in the copy only
    ctx.run(_TOKEN.set, token)
    fut = asyncio.get_running_loop().run_in_executor(pool, functools.partial(ctx.run, fn,
                                                                             *args))
    try:
        return await (asyncio.shield(fut) if wait else fut)
    except asyncio.CancelledError:
        token.set()
        while wait and not fut.done():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait({fut})
        if fut.done() and not fut.cancelled():
            fut.exception()  # (retrieved: no "never retrieved" warning)
        raise


async def atomic(aw: Awaitable[T], *, defer: bool = True) -> T:
    """Await ``aw`` to its end even when the awaiting task is cancelled meanwhile: for a step
    whose effect cannot be cut in half — a tool that changes the kernel's state (``nft -f``,
    ``runc run``) and the record of it, a libvirt call that makes a domain, a clean-up.

    A cancel that came meanwhile is not lost: when ``aw`` failed, CancelledError is raised
    instead of its error; when it succeeded, its result is returned (so the caller knows
    its effect, e.g. adds it to what its clean-up undoes) and the task is cancelled again,
    which its next ``await`` raises (``defer``). A cancel already pending when the step is
    given (one an earlier step held back, a ``max_time`` just expired) is raised before a
    step not yet begun (a coroutine) begins: a kill is never followed by a new step.
    ``defer=False``, for a clean-up that runs because the task is ending anyway: the step
    always runs, and further cancels are dropped."""
    if defer and inspect.iscoroutine(aw):
        try:
            await asyncio.sleep(0)
        except asyncio.CancelledError:
            aw.close()  # never begun
            raise
    step = asyncio.ensure_future(aw)
    interrupted = False
    while not step.done():
        try:
            await asyncio.wait({step})
        except asyncio.CancelledError:
            interrupted = True
    if not interrupted or not defer:
        return step.result()
    me = asyncio.current_task()
    if step.cancelled() or step.exception() is not None:
        raise asyncio.CancelledError
    if me is not None:
        me.uncancel()  # the cancel this step held back, delivered at the next await (one
        me.cancel()  # count, as asyncio.timeout expects of a max_time)
        _DEFERRED.add(me)
    return step.result()


#: tasks :func:`atomic` cancelled again after its step: their cancel waits for their next
#: ``await``, which may come only after the handler returned (weak: a task that ended goes)
_DEFERRED: weakref.WeakSet[asyncio.Task[Any]] = weakref.WeakSet()


def deferred(task: asyncio.Task[Any] | None) -> bool:
    """True (once per :func:`atomic`) when ``task`` was given back a cancel that a step held:
    the job engine then takes it before it writes the job's result."""
    if task is None or task not in _DEFERRED:
        return False
    _DEFERRED.discard(task)
    return True


#: long work (downloads, image unpacking, trees chowned), apart from the short library calls
#: of the loop's default executor: slow transfers never hold up ``ip.*`` or ``info.*``
_LONG: ThreadPoolExecutor | None = None
LONG_WORKERS = 8


async def long_work(fn: Callable[..., T], *args: Any, wait: bool = False) -> T:
    """:func:`in_thread` in the pool of long work (:data:`LONG_WORKERS` threads; more such
    work waits for one)."""
    global _LONG
    if _LONG is None:
        _LONG = ThreadPoolExecutor(max_workers=LONG_WORKERS, thread_name_prefix="core0-long")
    return await in_thread(fn, *args, wait=wait, pool=_LONG)
