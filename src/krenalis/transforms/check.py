"""Checking that a workspace's steps load, before it is stored: every Python function imports
and is callable, every GeoIP database opens. Each pipeline with steps is loaded in a transform
process of its own (the same that would run them), from the code directory; the first failure
is a WorkspaceError at the step's line."""

from __future__ import annotations

import asyncio
from pathlib import Path

from krenalis.errors import TransformLoadError, WorkspaceError
from krenalis.transforms.process import TransformProcess
from krenalis.workspace.model import Pipeline, Workspace

__all__ = ["check_steps"]


async def check_steps(workspace: Workspace, base: Path, filename: str) -> None:
    """Raise WorkspaceError (``filename:line``) for the first step, in file order, that does
    not load from ``base``; disabled pipelines are checked too (enabling one must not fail)."""
    pipelines = [p for p in workspace.pipelines.values() if p.transform]
    failures = await asyncio.gather(*(_failure(p, base) for p in pipelines))
    for pipeline, failure in zip(pipelines, failures, strict=True):
        if failure is not None:
            step = failure.step
            line = step.line if step is not None else None
            where = f'pipeline "{pipeline.id}": '
            raise WorkspaceError(filename, line or None, where + str(failure))


async def _failure(pipeline: Pipeline, base: Path) -> TransformLoadError | None:
    trial = TransformProcess(pipeline.id, pipeline.source, pipeline.transform, base)
    try:
        await trial.start()
    except TransformLoadError as exc:
        return exc
    finally:
        await trial.close()
    return None
