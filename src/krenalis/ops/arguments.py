"""The arguments of the operator commands (nats, status, dlq, replay, tail, send, snippet,
transform, workspace).

Only argument definitions and help: `krenalis.cli.COMMANDS` says which function runs each.
"""

from __future__ import annotations

import argparse

from krenalis.ops._common import CONNECT_TIMEOUT

__all__ = ["add_operator_commands"]


def add_operator_commands(commands: argparse._SubParsersAction) -> None:
    """Add every operator command to the `krenalis` parser."""
    _add_workspace(commands)
    _add_status(commands)
    _add_dlq(commands)
    _add_replay(commands)
    _add_tail(commands)
    _add_send(commands)
    _add_transform(commands)
    _add_snippet(commands)
    _add_nats(commands)


_SYNC_HELP = (
    "when nats-server fsyncs JetStream writes: 'always' (before acknowledging each write), a "
    "duration such as 10s, or 'default' (the NATS default, every 2 minutes). NATS acknowledges "
    "a write once the OS has it, so with periodic fsync a power failure or OS crash loses "
    "acknowledged events. Default: always for a single node (it has no replica to recover "
    "from); the NATS default for --cluster, where a write is acknowledged once a majority of "
    "nodes holds it (use always if the nodes share power)"
)


def _add_nats(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "nats",
        help="set up a self-managed nats-server: keys, configuration, start, check",
        description="Set up and check the NATS server Krenalis uses (see docs/nats.md).",
    )
    sub = parser.add_subparsers(dest="subcommand", metavar="COMMAND", required=True)

    keygen = sub.add_parser(
        "keygen",
        help="generate a user NKey pair (like `nk -gen user -pubout`)",
        description=(
            "Print a new user NKey pair: the seed (SU..., secret: KRENALIS_NATS_NKEY), then the "
            "public key (U..., for `krenalis nats config --nkey`)."
        ),
    )
    keygen.add_argument(
        "--out", metavar="FILE",
        help="write the seed to FILE (mode 0600) and print only the public key",
    )  # fmt: skip
    keygen.add_argument("--force", action="store_true", help="replace FILE if it exists")

    _add_nats_config(sub)

    server = sub.add_parser(
        "server",
        help="run the bundled nats-server in the foreground",
        description=(
            "Run the nats-server that ships with Krenalis (`nats-server -c FILE`). "
            "Stop it with SIGTERM (Ctrl+C) so it closes its store cleanly."
        ),
    )
    server.add_argument("-c", "--config", required=True, metavar="FILE", help="configuration file")

    check = sub.add_parser(
        "check",
        help="check that Krenalis can use the configured NATS (KRENALIS_NATS_*)",
        description=(
            "Connect with the KRENALIS_NATS_* settings and report the server version (2.12 or "
            "newer required), JetStream for the account, the cluster and the EVENTS stream. "
            "Exits 1 when something stops Krenalis from working."
        ),
    )
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    check.add_argument(
        "--timeout", type=float, default=CONNECT_TIMEOUT, metavar="SECONDS",
        help=f"how long to try to connect (default {CONNECT_TIMEOUT:g})",
    )  # fmt: skip


def _add_nats_config(sub: argparse._SubParsersAction) -> None:
    config = sub.add_parser(
        "config",
        help="write a nats-server configuration (single node or cluster node)",
        description=(
            "Write a nats-server configuration with JetStream, checked with `nats-server -t` "
            "before it is written (mode 0600: it may hold a token or password)."
        ),
    )
    config.add_argument(
        "--listen", default="127.0.0.1:4222", metavar="HOST:PORT",
        help="client address (default 127.0.0.1:4222; 0.0.0.0:4222 for other machines)",
    )  # fmt: skip
    config.add_argument(
        "--store-dir", default="/var/lib/nats", metavar="DIR",
        help="where JetStream stores events (default /var/lib/nats); one disk per node",
    )  # fmt: skip
    config.add_argument("--sync-interval", metavar="always|DURATION|default", help=_SYNC_HELP)
    config.add_argument(
        "--max-file-store",
        metavar="SIZE",
        help="JetStream disk limit, e.g. 20GB (default: the NATS default)",
    )
    auth = config.add_argument_group("authorization (choose one; NKey recommended)")
    auth.add_argument(
        "--nkey", action="append", default=[], metavar="U...",
        help="a user public key from `krenalis nats keygen`; repeat to allow several (rotation)",
    )  # fmt: skip
    auth.add_argument(
        "--token", metavar="TOKEN", help="token authorization ('-': read it from stdin)"
    )
    auth.add_argument("--user", metavar="USER", help="user for user/password authorization")
    auth.add_argument("--password", metavar="PASSWORD", help="password ('-': read it from stdin)")
    cluster = config.add_argument_group("cluster node")
    cluster.add_argument(
        "--cluster", action="store_true", help="write a cluster node's configuration"
    )
    cluster.add_argument(
        "--name", metavar="NAME", help="server name, unique in the cluster (e.g. nats-node-1)"
    )
    cluster.add_argument(
        "--routes", action="append", default=[], metavar="URL",
        help="another node's route URL, e.g. nats://nats-node-2:6222 (repeat for each node)",
    )  # fmt: skip
    cluster.add_argument(
        "--cluster-listen", metavar="HOST:PORT",
        help="route address (default 127.0.0.1:6222; use a private address between machines)",
    )  # fmt: skip
    cluster.add_argument(
        "--cluster-name", default="krenalis", metavar="NAME",
        help="cluster name, the same on every node (default krenalis)",
    )  # fmt: skip
    config.add_argument("--out", metavar="FILE", help="write to FILE (default: print)")
    config.add_argument("--force", action="store_true", help="replace FILE if it exists")


def _add_status(commands: argparse._SubParsersAction) -> None:
    status = commands.add_parser(
        "status",
        help="the EVENTS stream and each pipeline's backlog, in-flight events and dead letters",
        description=(
            "Show the EVENTS stream and, per pipeline: pending events, events being processed, "
            "redeliveries, dead letters and the last delivery; per source, its archive (size "
            "and time span). Without KRENALIS_NATS_URL it connects to the embedded nats-server "
            "of a running `krenalis serve`."
        ),
    )
    status.add_argument(
        "--json", action="store_true", help="print JSON (one line per refresh with --watch)"
    )
    status.add_argument(
        "--watch", type=float, metavar="SECONDS", help="refresh every SECONDS until Ctrl+C"
    )


def _add_dlq(commands: argparse._SubParsersAction) -> None:
    dlq = commands.add_parser(
        "dlq",
        help="dead letters: events a pipeline gave up on (list, show, replay, purge)",
        description="Inspect, replay or delete the dead letters kept in the EVENTS_DLQ stream.",
    )
    sub = dlq.add_subparsers(dest="subcommand", metavar="COMMAND", required=True)
    pipeline_help = "only the dead letters of this pipeline"

    listing = sub.add_parser("list", help="list dead letters with their reason and attempts")
    listing.add_argument("--pipeline", metavar="ID", help=pipeline_help)
    listing.add_argument(
        "--limit", type=int, default=100, metavar="N", help="at most N (default 100)"
    )
    listing.add_argument("--json", action="store_true", help="print JSON")

    show = sub.add_parser("show", help="show one dead letter and its event")
    show.add_argument("seq", type=int, metavar="SEQ", help="its sequence number (from `dlq list`)")
    show.add_argument("--json", action="store_true", help="print JSON")

    replay = sub.add_parser(
        "replay",
        help="put dead letters back into EVENTS for their pipeline",
        description=(
            "Put dead letters back into EVENTS on their pipeline's subject, then delete them "
            "from EVENTS_DLQ. Without SEQ, every dead letter (of --pipeline) is replayed."
        ),
    )
    replay.add_argument("seq", type=int, nargs="*", metavar="SEQ", help="only these dead letters")
    replay.add_argument("--pipeline", metavar="ID", help=pipeline_help)

    purge = sub.add_parser("purge", help="delete dead letters for good")
    purge.add_argument("--pipeline", metavar="ID", help=pipeline_help)
    purge.add_argument("--yes", action="store_true", help="do not ask for confirmation")


_FILTER_HELP = (
    "only events this filter takes, in the workspace's syntax (YAML or JSON), or a file "
    "holding it, e.g. '{all: [{field: type, op: is, value: track}]}'"
)


def _add_replay(commands: argparse._SubParsersAction) -> None:
    replay = commands.add_parser(
        "replay",
        help="send a source's archived events again, into one pipeline",
        description=(
            "Read the source's archive from --since (to --until), keep what the pipeline's "
            "filter and consent rule take (and --filter), and publish it into the pipeline, "
            "whose workers deliver it with their transform steps. Replayed events keep their "
            "messageId: the warehouse and webhooks take each once, however often it is "
            "replayed. A stopped replay goes on with --resume ID."
        ),
    )
    replay.add_argument("--to", metavar="PIPELINE", help="the pipeline to replay into")
    replay.add_argument(
        "--source", metavar="ID", help="the archive to read (default: the pipeline's source)"
    )
    replay.add_argument(
        "--since", metavar="TIME",
        help="from this time (ISO 8601, UTC unless it says: 2026-11-20T00:00Z), or this long "
        "ago (2d, 90m)",
    )  # fmt: skip
    replay.add_argument("--until", metavar="TIME", help="to this time (default: now)")
    replay.add_argument("--filter", metavar="FILTER", help=_FILTER_HELP)
    replay.add_argument("--dry-run", action="store_true", help="count, publish nothing")
    replay.add_argument("--rate", type=float, metavar="N", help="publish at most N events a second")
    replay.add_argument("--resume", metavar="ID", help="go on with the replay ID where it stopped")


def _add_tail(commands: argparse._SubParsersAction) -> None:
    tail = commands.add_parser(
        "tail",
        help="watch events live: accepted, rejected, and what each pipeline does with them",
        description=(
            "Show each event as the collectors of the deployment take or reject it, and its "
            "outcome in each pipeline (delivered, retried, dead-lettered, filtered by a step), "
            "until Ctrl+C. Collectors and workers send nothing while nobody tails."
        ),
    )
    tail.add_argument("--source", metavar="ID", help="only this source's events")
    tail.add_argument(
        "--pipeline", metavar="ID", help="only the events this pipeline takes or filters out"
    )
    tail.add_argument("--filter", metavar="FILTER", help=_FILTER_HELP)
    tail.add_argument("--json", action="store_true", help="print NDJSON, one object per line")
    tail.add_argument("--limit", type=int, metavar="N", help="stop after N lines")


def _add_send(commands: argparse._SubParsersAction) -> None:
    send = commands.add_parser(
        "send",
        help="send test events of every type to a running collector",
        description=(
            "Send track, identify, page, screen, group and alias test events to a running "
            "collector and print what it accepted."
        ),
    )
    send.add_argument(
        "--url", metavar="URL",
        help="the collector (default http://127.0.0.1:KRENALIS_HTTP_PORT, i.e. port 2022)",
    )  # fmt: skip
    send.add_argument(
        "--write-key", metavar="KEY",
        help="a source's write key (default: the first source of the workspace file)",
    )  # fmt: skip
    send.add_argument(
        "--count", type=int, default=1, metavar="N", help="events of each type (default 1)"
    )


def _add_snippet(commands: argparse._SubParsersAction) -> None:
    snippet = commands.add_parser(
        "snippet",
        help="the HTML snippet a website pastes into its pages (analytics.js from here)",
        description=(
            "Print the standard analytics.js snippet for a source: the collector serves the "
            "script and its settings, so the page's events come here. The source is read from "
            "the workspace stored in NATS, or from --workspace FILE."
        ),
    )
    snippet.add_argument(
        "--source", metavar="ID", help="the source (default: the workspace's first source)"
    )
    snippet.add_argument(
        "--host", metavar="URL",
        help="the collector's public URL as browsers reach it, e.g. https://events.example.com "
        "(default http://127.0.0.1:KRENALIS_HTTP_PORT)",
    )  # fmt: skip
    snippet.add_argument(
        "--workspace", metavar="FILE",
        help="read the source from this workspace file instead of the one stored in NATS",
    )  # fmt: skip


def _add_transform(commands: argparse._SubParsersAction) -> None:
    transform = commands.add_parser(
        "transform",
        help="try a pipeline's transform steps on an event or on its dead letters",
        description="Run a pipeline's transform: steps here, showing what each step changes.",
    )
    sub = transform.add_subparsers(dest="subcommand", metavar="COMMAND", required=True)
    test = sub.add_parser(
        "test",
        help="each step's input and output, as a coloured diff",
        description=(
            "Run PIPELINE's steps on the event(s) of --event FILE.json, or on its dead letters "
            "(--from-dlq), and show what each step changes and whether the event passes. With "
            "--workspace FILE the pipeline comes from that file and nothing needs NATS (but "
            "reading EVENTS_DLQ); without it, from the workspace stored in NATS."
        ),
    )
    test.add_argument("pipeline", metavar="PIPELINE", help="the pipeline's id")
    test.add_argument(
        "--event", metavar="FILE.json", help="an event (a JSON object) or a JSON list of events"
    )
    test.add_argument(
        "--from-dlq", nargs="?", const="", metavar="FILE",
        help="the pipeline's dead letters, from EVENTS_DLQ or from FILE (as `krenalis dlq "
        "show SEQ --json` prints them); says which would now pass",
    )  # fmt: skip
    test.add_argument(
        "--limit", type=int, default=20, metavar="N", help="at most N dead letters (default 20)"
    )
    test.add_argument(
        "--workspace", metavar="FILE",
        help="take the pipeline from this workspace file (its directory is the code directory)",
    )  # fmt: skip


def _add_workspace(commands: argparse._SubParsersAction) -> None:
    workspace = commands.add_parser(
        "workspace",
        help="the workspace stored in NATS: apply a file, show, history, diff, rollback",
        description=(
            "Every Krenalis process follows the workspace stored in NATS (bucket "
            "KRENALIS_WORKSPACE). These commands change and inspect it."
        ),
    )
    sub = workspace.add_subparsers(dest="subcommand", metavar="COMMAND", required=True)
    apply = sub.add_parser(
        "apply",
        help="check a workspace file, show what changes, and store it",
        description=(
            "Check FILE (errors name the line), print what changes against the stored "
            "workspace, and store it as a new revision if nobody changed it meanwhile. "
            "Removing or renaming a pipeline, or lowering its shards, while it holds events is "
            "refused unless --drain or --discard says what to do with them. ${VAR} references "
            "are stored as written: each process expands them with its own environment."
        ),
    )
    apply.add_argument("file", metavar="FILE", help="the workspace file")
    _add_change_options(apply)
    rollback = sub.add_parser(
        "rollback",
        help="store an earlier revision again (as a new revision)",
        description="Apply the text of revision N again, with the same checks as apply.",
    )
    rollback.add_argument("revision", type=int, metavar="N", help="a revision from `history`")
    _add_change_options(rollback)
    show = sub.add_parser("show", help="print the stored workspace (or revision N)")
    show.add_argument("--revision", type=int, metavar="N", help="an earlier revision")
    sub.add_parser("history", help="the stored revisions: when, by whom, what changed")
    diff = sub.add_parser("diff", help="what applying FILE would change")
    diff.add_argument("file", metavar="FILE", help="the workspace file")


def _add_change_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dry-run", action="store_true", help="check and show, store nothing")
    backlog = parser.add_mutually_exclusive_group()
    backlog.add_argument(
        "--drain", action="store_true",
        help="removed pipelines (and dropped shards) stop taking events, deliver their backlog, "
        "then go",
    )  # fmt: skip
    backlog.add_argument(
        "--discard", action="store_true",
        help='their backlog moves to EVENTS_DLQ with reason "pipeline removed" (replayable), '
        "then they go",
    )  # fmt: skip
