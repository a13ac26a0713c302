"""`python -m bench.run` (`make bench`): run the scenarios, write bench/RESULTS.md.

    python -m bench.run                      # every scenario, about 6 minutes
    python -m bench.run --quick              # a subset with short phases, 1-2 minutes
    python -m bench.run --scenario warehouse --scenario webhook
    python -m bench.run --e2e-duration 60    # the 60 s end-to-end runs

Every process the harness starts is stopped by PID in `finally`, on failure or Ctrl+C too.
Temporary data lives in a fresh directory under $TMPDIR, removed at the end (`--keep` keeps it).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path

from bench import procs
from bench.report import write_report
from bench.scenarios import QUICK, SCENARIOS, Options, Runner, note_http_workers
from bench.stacks import rmtree

HERE = Path(__file__).resolve().parent


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="short phases, fewer variants")
    p.add_argument("--scenario", action="append", choices=sorted(SCENARIOS), default=[],
                   help="run only this scenario (repeatable)")  # fmt: skip
    p.add_argument("--ingest-duration", type=float, help="measured seconds per ingest phase")
    p.add_argument(
        "--e2e-duration",
        type=float,
        help="measured seconds of the headline warehouse run (default 20)",
    )
    p.add_argument(
        "--short-duration",
        type=float,
        help="measured seconds of the other end-to-end phases (default 6)",
    )
    p.add_argument("--warmup", type=float, help="seconds of load before measuring")
    p.add_argument("--connections", type=int, help="load generator connections (batch >= 10)")
    p.add_argument("--event-size", type=int, help="bytes per event (default ~400)")
    p.add_argument("--latency-rate", type=float, help="events/s of the warehouse latency run")
    p.add_argument("--sustained-rate", type=float,
                   help="events/s the warehouse must keep up with (default 12,000)")  # fmt: skip
    p.add_argument("--sustained-duration", type=float,
                   help="measured seconds of the sustained warehouse run (default 60)")  # fmt: skip
    p.add_argument(
        "--quiet-wait",
        type=float,
        help="seconds to wait for other processes to calm down before each phase",
    )
    p.add_argument("--output", type=Path, default=HERE / "RESULTS.md")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    root = Path(tempfile.mkdtemp(prefix="krenalis-bench-"))
    opts = Options(root=root, quick=args.quick)
    if args.quick:
        opts.ingest_duration, opts.e2e_duration, opts.short_duration = 5.0, 8.0, 8.0
        opts.warmup = 1.5
        opts.baseline_seconds, opts.quiet_wait = 4.0, 5.0
    for name in ("ingest_duration", "e2e_duration", "short_duration", "warmup", "connections", "event_size",
                 "latency_rate", "sustained_rate", "sustained_duration", "quiet_wait"):  # fmt: skip
        value = getattr(args, name)
        if value is not None:
            setattr(opts, name, value)
    names = args.scenario or (QUICK if args.quick else list(SCENARIOS))
    runner = Runner(opts, log=lambda s: print(s, flush=True))
    from bench.report import _git

    runner.commit_start = _git()
    note_http_workers(runner)

    def on_term(signum, frame):  # SIGTERM behaves like Ctrl+C: stop everything, then exit
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    started = time.time()
    failed: list[str] = []
    print(f"Krenalis benchmark: {', '.join(names)} (temporary data in {root})", flush=True)
    print(f"  this disk: {runner.measure_fsync():,.0f} fsyncs/s", flush=True)
    try:
        for name in names:
            print(f"[{time.time() - started:5.0f}s] {name}", flush=True)
            try:
                SCENARIOS[name](runner)
            except KeyboardInterrupt:
                raise
            except Exception as exc:
                failed.append(name)
                runner.notes.append(f"Scenario `{name}` failed: {exc}")
                traceback.print_exc()
            finally:
                procs.stop_all()
    except KeyboardInterrupt:
        print("Interrupted; stopping every process started.", file=sys.stderr)
        procs.stop_all()
        return 130
    finally:
        procs.stop_all()
        elapsed = time.time() - started
        if runner.rows or runner.extra_rows or runner.drain_rows:
            cmd = "python -m bench.run " + " ".join(argv if argv is not None else sys.argv[1:])
            write_report(args.output, runner, opts, command=cmd.strip(), elapsed=elapsed)
            (args.output.with_suffix(".json")).write_text(
                json.dumps(
                    {
                        "rows": runner.rows,
                        "nats_modes": runner.extra_rows,
                        "drain": runner.drain_rows,
                        "notes": runner.notes,
                    },  # fmt: skip
                    indent=1,
                    default=str,
                )
            )
            print(f"Wrote {args.output} ({elapsed:.0f}s in total).", flush=True)
        if not args.keep:
            rmtree(root)
        else:
            print(f"Kept {root}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
