"""Replaying sources' archives into pipelines: `krenalis replay` and new pipelines' backfills.

:mod:`~krenalis.replay.reader` reads an archive in order, :mod:`~krenalis.replay.engine`
filters and publishes into a pipeline, :mod:`~krenalis.replay.state` keeps each replay's
progress so that it can be resumed, and taken by one process only.
"""
