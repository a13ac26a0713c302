"""Loading the Python function of a ``python:`` step.

``module:function`` is imported as any module (``importlib.import_module``): it must be
importable where the workers run (an installed package, or a module in the code directory,
which is first on ``sys.path``). ``file.py:function`` is loaded from that file, relative to the
code directory: the workspace file's directory for ``krenalis workspace apply``, and
``KRENALIS_TRANSFORMS_DIR`` (default: the directory of the process's workspace file, else the
working directory) in the processes that run the steps.

A function takes ``(event)`` or ``(event, context)``. Loading happens in a transform process
(:mod:`krenalis.transforms.child`), never in the worker itself: a module may do anything when
imported, including never finish.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from krenalis.transforms.builtin import StepFailed
from krenalis.transforms.context import Context
from krenalis.transforms.spec import FunctionRef

__all__ = ["load_function", "short_traceback"]


def load_function(ref: FunctionRef, base: Path) -> tuple[Callable[[dict, Context], Any], str]:
    """The step function ``ref`` names, called as (event, context), and the file that defines
    it; StepFailed saying what is wrong (a missing file, an import error, not callable...)."""
    where, _, name = ref.rpartition(":")
    module = _load_file(base / where) if ref.is_file else _import(where)
    function = getattr(module, name, None)
    shown = where if ref.is_file else f"module {where}"
    if function is None:
        raise StepFailed(f"{shown} has no function {name!r}")
    if not callable(function):
        raise StepFailed(f"{shown}: {name} is {type(function).__name__}, not a function")
    return _as_step(function, f"{shown}: {name}"), str(getattr(module, "__file__", "") or "")


def _load_file(path: Path) -> ModuleType:
    if not path.is_file():
        raise StepFailed(f"{path} does not exist (file paths are relative to the code directory)")
    # A name of its own per file content: a changed file loaded again is a new module.
    digest = hashlib.sha256(str(path.resolve()).encode() + path.read_bytes()).hexdigest()[:12]
    name = f"krenalis_step_{path.stem}_{digest}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise StepFailed(f"{path} cannot be loaded as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # before running it: dataclasses and pickle look it up
    try:
        spec.loader.exec_module(module)
    except BaseException as exc:
        del sys.modules[name]
        raise StepFailed(f"{path.name} does not import: {_error(exc)}") from None
    return module


def _import(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name and name.startswith(exc.name):
            raise StepFailed(
                f"module {name} is not found (a module path must be importable where the "
                "workers run: an installed package or a module in the code directory)"
            ) from None
        raise StepFailed(f"module {name} does not import: {_error(exc)}") from None
    except BaseException as exc:
        raise StepFailed(f"module {name} does not import: {_error(exc)}") from None


def _as_step(function: Callable[..., Any], shown: str) -> Callable[[dict, Context], Any]:
    """``function`` called as (event, context), whether it takes the context or not."""
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        return function  # a builtin without a signature: trust it with both arguments
    for arguments, step in (((1, 2), function), ((1,), lambda event, context: function(event))):
        try:
            signature.bind(*arguments)
        except TypeError:
            continue
        return step
    raise StepFailed(
        f"{shown} takes {signature}; a step function takes (event) or (event, context)"
    )


def _error(exc: BaseException) -> str:
    if isinstance(exc, SyntaxError):
        return f"SyntaxError: {exc.msg} (line {exc.lineno})"
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


_OURS = str(Path(__file__).resolve().parent.parent)


def short_traceback(exc: BaseException, limit: int = 3) -> str:
    """The exception and the step's own last frames (not Krenalis's) on one line, as a dead
    letter's reason holds it."""
    frames = inspect.getinnerframes(exc.__traceback__, context=1) if exc.__traceback__ else []
    frames = [f for f in frames if not f.filename.startswith(_OURS)]
    shown = [
        f"{Path(f.filename).name}:{f.lineno} in {f.function}"
        + (f" ({f.code_context[0].strip()})" if f.code_context else "")
        for f in frames[-limit:]
    ]
    where = f" at {' <- '.join(reversed(shown))}" if shown else ""
    return f"{_error(exc)}{where}"
