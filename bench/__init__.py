"""The Krenalis event stream benchmark harness: `python -m bench.run` (or `make bench`).

Modules:
- events:      realistic ~400-byte Segment track events, assembled cheaply per request;
- loadgen:     the load generator process (raw HTTP/1.1 keep-alive on uvloop, or httpx);
- receiver:    a fast webhook receiver process that measures end-to-end latency;
- baseline:    raw nats-py publishing of the same messages (publish_async, atomic batches);
- experiments: NATS alone: publish modes by request size, ack cost (WorkQueue versus limits + purge);
- procs:       starting and stopping processes by PID, and the psutil CPU/RSS monitor;
- stacks:      what scenarios run against (krenalis serve/collector/worker, NATS nodes,
               receiver) and the probes that read each sink;
- scenarios:   the measured scenarios; report: bench/RESULTS.md; run: the command line;
- drain:       on its own (`python -m bench.drain`): the warehouse worker alone draining a
               filled stream, with its CPU per event.
- transforms:  on its own (`python -m bench.transforms`): the same drain without transform
               steps, with an identity Python function and with five built-in steps.
"""

from __future__ import annotations

import json
import sys


def write_result(result: dict, out: str | None) -> None:
    """A measuring process's result, as JSON: into the file `out` (what the harness reads), or
    on standard output."""
    text = json.dumps(result)
    if out:
        with open(out, "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text + "\n")
