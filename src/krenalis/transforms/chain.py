"""Running a pipeline's steps on one event, each within its time limit.

:class:`Chain` runs in a transform process (:mod:`krenalis.transforms.child`), and in
`krenalis transform test`. Per event it decodes the stream's bytes, runs the steps in order
and encodes what comes out:

- a step that returns the event (changed or not) passes it on;
- ``None`` (or an empty list) drops it: nothing is delivered, the event counts as filtered;
- a list fans out: each item goes on as an event of its own, with the messageId
  ``<messageId>#<position>``, so a replay makes the same ids and the sinks' idempotency holds;
- an exception, a wrong return value, or a step that runs past its time limit fails the event:
  its reason (with a short traceback) goes to the dead letters, and the next event goes on.

**Time limits.** While a batch runs, an interval timer (SIGALRM every 20 ms) checks whether the
current step has passed its deadline and, if so, raises :class:`StepTimeout` inside it: a loop
or a sleep stops there, and the process goes on with the next event. Code that does not give
the interpreter back (a C call that never returns) or that swallows the exception is the
parent's to stop: it kills the process (:mod:`krenalis.transforms.process`). The check costs
two clock reads per step and event; the timer itself, 50 wake-ups a second.
"""

from __future__ import annotations

import contextlib
import copy
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from krenalis.errors import InvalidEvent
from krenalis.events import decode_event, user_key
from krenalis.transforms import builtin
from krenalis.transforms.bots import build_drop_bots
from krenalis.transforms.builtin import StepFailed
from krenalis.transforms.context import Context
from krenalis.transforms.functions import load_function, short_traceback
from krenalis.transforms.geoip import build_geoip
from krenalis.transforms.spec import (
    DropBotsStep,
    DropStep,
    GeoipStep,
    HashStep,
    KeepStep,
    MaskIpStep,
    PythonStep,
    RenameStep,
    SetStep,
    Step,
)

__all__ = [
    "TICK",
    "Chain",
    "LoadFailed",
    "Result",
    "StepStats",
    "StepTimeout",
    "Traced",
    "build_steps",
    "time_limits",
]

#: Seconds between two looks at the current step's deadline.
TICK = 0.02

#: An event's outcome: (user key, the events to deliver as JSON, and when there are none the
#: label of the step that dropped it, else ""), or the reason it failed.
Result = tuple[str, list[bytes], str] | str

_BUILDERS: dict[type, Callable[[Any], Any]] = {
    DropStep: builtin.build_drop,
    RenameStep: builtin.build_rename,
    SetStep: builtin.build_set,
    KeepStep: builtin.build_keep,
    HashStep: builtin.build_hash,
    MaskIpStep: builtin.build_mask_ip,
    DropBotsStep: build_drop_bots,
}
_encode = msgspec.json.Encoder().encode


class StepTimeout(BaseException):
    """Raised inside a step that ran past its time limit. A BaseException, so that a step's
    own ``except Exception`` does not swallow it."""


class LoadFailed(Exception):
    """A step that cannot be built: ``index`` is its place in the pipeline's list."""

    def __init__(self, index: int, reason: str) -> None:
        super().__init__(reason)
        self.index = index
        self.reason = reason


class _Failed(Exception):
    """An event that a step failed (the chain stops for it)."""


@dataclass
class StepStats:
    """What one step did since the last :meth:`take`."""

    events_in: int = 0
    events_out: int = 0
    dropped: int = 0
    failed: int = 0
    seconds: float = 0.0

    def take(self) -> list[float]:
        taken = [self.events_in, self.events_out, self.dropped, self.failed, self.seconds]
        self.events_in = self.events_out = self.dropped = self.failed = 0
        self.seconds = 0.0
        return taken


@dataclass
class _Built:
    step: Step
    run: Callable[[dict, Context], Any]
    limit: float
    stats: StepStats = field(default_factory=StepStats)


@dataclass
class Traced:
    """One step of `transform test`: what it got, and what it gave (or why it failed)."""

    step: Step
    before: list[dict]
    after: list[dict]
    error: str | None
    seconds: float


def build_steps(steps: tuple[Step, ...], base: Path) -> tuple[list[_Built], list[str]]:
    """Each step ready to run, and the files it read (the Python functions' modules, the
    GeoIP databases: a change to one reloads the pipeline); LoadFailed for the first step
    that cannot be built."""
    built: list[_Built] = []
    files: list[str] = []
    for step in steps:
        spec = step.spec
        try:
            if isinstance(spec, PythonStep):
                run, path = load_function(spec.python, base)
                files.append(path)
            elif isinstance(spec, GeoipStep):
                run = build_geoip(spec, base)
                files.append(str((base / spec.geoip.database).resolve()))
            else:
                run = _BUILDERS[type(spec)](spec)
        except StepFailed as exc:
            raise LoadFailed(step.index, str(exc)) from None
        built.append(_Built(step, run, spec.limit))
    return built, files


class _Deadline:
    """The running step's deadline (perf_counter seconds; 0: none), read by the timer."""

    at = 0.0


def _on_tick(signum: int, frame: Any) -> None:
    if _Deadline.at and time.perf_counter() > _Deadline.at:
        _Deadline.at = 0.0  # raised once: a step that swallows it is the parent's to kill
        raise StepTimeout


@contextlib.contextmanager
def time_limits() -> Iterator[None]:
    """Enforce the steps' time limits meanwhile (main thread only: SIGALRM)."""
    previous = signal.signal(signal.SIGALRM, _on_tick)
    signal.setitimer(signal.ITIMER_REAL, TICK, TICK)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0, 0)
        signal.signal(signal.SIGALRM, previous)


class Chain:
    """A pipeline's built steps, run on one event at a time."""

    def __init__(self, built: list[_Built], source: str, pipeline: str) -> None:
        self.built = built
        self.source = source
        self.pipeline = pipeline

    def stats(self) -> list[list[float]]:
        """Each step's figures since the last call (and start again from zero)."""
        return [b.stats.take() for b in self.built]

    def run(self, data: bytes, stored_at: float) -> Result:
        """One event from the stream through every step (see the module docstring)."""
        try:
            event = decode_event(data)
        except InvalidEvent as exc:
            return f"invalid event data: {exc}"
        user = user_key(event)  # before the steps: they may change (hash) the ids
        context = Context(self.source, self.pipeline, stored_at)
        events = [event]
        try:
            for built in self.built:
                events = _step(built, events, context)
                if not events:
                    return user, [], built.step.label
            return user, [_encode(e) for e in events], ""
        except _Failed as exc:
            return str(exc)
        except (TypeError, ValueError, OverflowError) as exc:
            return f"the steps' output cannot be written as JSON: {exc}"

    def trace(self, event: dict, stored_at: float = 0.0) -> list[Traced]:
        """Every step's input and output for one event, until it is dropped or fails."""
        context = Context(self.source, self.pipeline, stored_at)
        traced: list[Traced] = []
        events = [event]
        for built in self.built:
            before = copy.deepcopy(events)
            started = time.perf_counter()
            try:
                events = _step(built, events, context)
                error = None
            except _Failed as exc:
                events, error = [], str(exc)
            traced.append(Traced(built.step, before, copy.deepcopy(events), error,
                                 time.perf_counter() - started))  # fmt: skip
            if not events:
                break
        return traced


def _step(built: _Built, events: list[dict], context: Context) -> list[dict]:
    """``events`` through one step; _Failed if it fails one of them."""
    stats = built.stats
    out: list[dict] = []
    for event in events:
        stats.events_in += 1
        started = time.perf_counter()
        _Deadline.at = started + built.limit
        try:
            result = built.run(event, context)
        except StepTimeout:
            stats.failed += 1
            raise _Failed(
                f"step {built.step.label} ran past its time limit of {built.limit * 1000:g}ms"
            ) from None
        except BaseException as exc:  # the step's own failure, whatever it is (SystemExit too)
            stats.failed += 1
            raise _Failed(f"step {built.step.label} failed: {short_traceback(exc)}") from None
        finally:
            _Deadline.at = 0.0
            stats.seconds += time.perf_counter() - started
        _collect(built, event, result, out)
    return out


def _collect(built: _Built, event: dict, result: Any, out: list[dict]) -> None:
    stats = built.stats
    if result is None:
        stats.dropped += 1
    elif isinstance(result, dict):
        out.append(result)
        stats.events_out += 1
    elif isinstance(result, list) and all(isinstance(item, dict) for item in result):
        if not result:
            stats.dropped += 1
        base = str(event.get("messageId", ""))
        for position, item in enumerate(result):
            if any(item is other for other in result[:position]):
                item = copy.deepcopy(item)  # the same object twice: two events, two ids
            item["messageId"] = f"{base}#{position}"
            out.append(item)
        stats.events_out += len(result)
    else:
        stats.failed += 1
        raise _Failed(
            f"step {built.step.label} returned {_kind(result)}; a step returns the event (a "
            "dict), a list of events, or None to drop it"
        )


def _kind(value: Any) -> str:
    if isinstance(value, list):
        return "a list holding something else than events"
    return f"a value of type {type(value).__name__}"
