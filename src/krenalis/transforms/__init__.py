"""A pipeline's ``transform:`` steps: built-in steps and Python functions that change, drop or
fan out its events in the worker, after the filter and before the sink.

The declarations are in :mod:`~krenalis.transforms.spec` (read by the workspace loader); they
run in a child process per worker (:mod:`~krenalis.transforms.process`,
:mod:`~krenalis.transforms.child`, :mod:`~krenalis.transforms.chain`). A step function gets
the event and a :class:`~krenalis.transforms.context.Context`.
"""
