"""End to end: `krenalis tail` sees what two collector processes accept and reject, and what the
pipeline's worker does with each event; nothing is sent while nobody tails."""

from __future__ import annotations

import asyncio
import json
import signal
import sys

import httpx
import nats
from e2e_support import OTHER_KEY, WRITE_KEY, make_event, process_env, wait_for

from krenalis.stream.tail import INTEREST_SUBJECT, events_subject, outcomes_subject
from sinks.webhook_receiver import WebhookReceiver

BOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"


def workspace(hook: str) -> str:
    return f"""\
sources:
  web:
    write_key: "{WRITE_KEY}"
destinations:
  hook:
    type: webhook
    url: "{hook}"
pipelines:
  web-hook:
    source: web
    to: hook
    transform:
      - drop_bots
  web-tracks:
    source: web
    to: hook
    filter:
      all:
        - {{field: type, op: is, value: track}}
"""


async def post(base_url: str, batch: list[dict], key: str = WRITE_KEY) -> httpx.Response:
    async with httpx.AsyncClient(timeout=30) as client:
        return await client.post(f"{base_url}/v1/batch", json={"batch": batch}, auth=(key, ""))


class Tail:
    """`krenalis tail --json` as a child process; its lines, read as they come."""

    def __init__(self, deployment, *args: str) -> None:
        self.deployment = deployment
        self.args = args
        self.lines: list[dict] = []
        self.proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Tail:
        env = process_env(self.deployment.data_dir, nats_url=self.deployment.nats_url)
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "krenalis.cli", "tail", "--json", *self.args,
            cwd=self.deployment.root, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        self._reader = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            self.lines.append(json.loads(line))

    def of(self, kind: str) -> list[dict]:
        return [line for line in self.lines if line["kind"] == kind]

    async def stop(self) -> int:
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGINT)
        code = await asyncio.wait_for(self.proc.wait(), 10)
        if self._reader is not None:
            await self._reader
        return code

    async def __aexit__(self, *exc_info: object) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


async def test_tail_sees_accepted_and_rejected_events_from_two_collectors(deployment):
    async with WebhookReceiver() as rx:
        deployment.write_workspace(workspace(rx.url))
        collectors = [deployment.start("collector", name=f"collector-{n}") for n in (1, 2)]
        worker = deployment.start("worker")
        for collector in collectors:
            await collector.wait_healthy()
        nc = await nats.connect(deployment.nats_url)
        try:
            # Nobody tails: the collectors and the worker send no events and no outcomes
            # (a starting process's one empty "hello" to the tails is not what is measured).
            sent: list[bytes] = []
            quiet = [
                await nc.subscribe(subject, cb=_collect(sent))
                for subject in (events_subject(">"), outcomes_subject(">"))
            ]
            assert (await post(collectors[0].base_url, [make_event("before")])).status_code == 200
            await wait_for(lambda: len(rx.bodies) >= 2, what="delivered", processes=[worker])
            await asyncio.sleep(0.5)
            assert sent == []

            beats: list[bytes] = []
            await nc.subscribe(INTEREST_SUBJECT, cb=_collect(beats))
            async with Tail(deployment) as tail:
                await wait_for(lambda: beats, what="the tail's first announcement")
                await asyncio.sleep(0.3)  # the collectors got it too
                await _send_everything(collectors)
                await wait_for(lambda: _complete(tail), what="every line", timeout=20,
                               processes=[*collectors, worker])  # fmt: skip
                assert await tail.stop() == 0
            _check_lines(tail)

            # The tail said goodbye: nothing is sent any more.
            await asyncio.sleep(0.3)
            sent.clear()
            assert (await post(collectors[1].base_url, [make_event("after")])).status_code == 200
            await asyncio.sleep(1.0)
            assert sent == []
            for sub in quiet:
                await sub.unsubscribe()
        finally:
            await nc.close()


def _collect(found: list[bytes]):
    async def append(msg) -> None:
        found.append(msg.data)

    return append


async def _send_everything(collectors) -> None:
    first, second = collectors
    long_id = "x" * 300
    answer = await post(first.base_url, [make_event("a1"), make_event("a2", anonymousId=long_id)])
    assert answer.json()["rejected"][0]["index"] == 1
    bot = make_event("b-bot", context={"userAgent": BOT})
    identify = {"type": "identify", "messageId": "b-id", "userId": "u1", "traits": {}}
    assert (await post(second.base_url, [make_event("b1"), bot, identify])).status_code == 200
    assert (await post(second.base_url, [make_event("nope")], key=OTHER_KEY)).status_code == 401


def _complete(tail: Tail) -> bool:
    delivered = {(line["pipeline"], line["messageId"]) for line in tail.of("delivered")}
    expected = {(p, m) for p in ("web-hook", "web-tracks") for m in ("a1", "b1")}
    return (
        len(tail.of("accepted")) >= 4 and tail.of("rejected") and tail.of("refused")
        and expected | {("web-hook", "b-id"), ("web-tracks", "b-bot")} <= delivered
        and tail.of("filtered")
    )  # fmt: skip


def _check_lines(tail: Tail) -> None:
    accepted = {line["event"]["messageId"]: line for line in tail.of("accepted")}
    assert set(accepted) == {"a1", "b1", "b-bot", "b-id"}  # from both collectors
    assert accepted["b-id"]["pipelines"] == ["web-hook"]
    assert accepted["b-id"]["filtered"] == ["web-tracks"]  # its filter turned it away
    assert accepted["a1"]["pipelines"] == ["web-hook", "web-tracks"]
    assert {line["path"] for line in accepted.values()} == {"/v1/batch"}
    [rejected] = tail.of("rejected")
    assert rejected["source"] == "web" and rejected["index"] == 1
    assert "255" in rejected["reason"] and rejected["event"]["messageId"] == "a2"
    [refused] = tail.of("refused")
    assert (refused["status"], refused["source"]) == (401, None)
    [filtered] = tail.of("filtered")
    assert (filtered["pipeline"], filtered["messageId"], filtered["step"]) == (
        "web-hook", "b-bot", "1:drop_bots",
    )  # fmt: skip
    assert not tail.of("dead-lettered") and not tail.of("retried")
    assert all(line["time"] for line in tail.lines)


async def test_tail_of_one_pipeline_with_a_filter_in_colour(deployment):
    async with WebhookReceiver() as rx:
        deployment.write_workspace(workspace(rx.url))
        serve = deployment.start("serve")
        await serve.wait_healthy()
        await serve.wait_log("Child process ready.")  # its worker process too
        env = process_env(deployment.data_dir, nats_url=deployment.nats_url, COLUMNS="200")
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "krenalis.cli", "tail", "--pipeline", "web-tracks",
            "--filter", "{all: [{field: properties.n, op: is, value: keep}]}", "--limit", "2",
            cwd=deployment.root, env=env, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            # The tail announces itself before it says what it watches: the collector knows.
            assert b"Watching source web, pipeline web-tracks" in await proc.stderr.readline()
            batch = [make_event("skip", properties={"n": "skip"}),
                     make_event("keep", properties={"n": "keep"})]  # fmt: skip
            assert (await post(serve.base_url, batch)).status_code == 200
            await asyncio.wait_for(proc.wait(), 20)  # --limit 2
            out = (await proc.stdout.read()).decode()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        assert proc.returncode == 0
        lines = out.splitlines()
        assert len(lines) == 2
        assert (
            "accepted" in lines[0] and "id keep" in lines[0] and "web-hook, web-tracks" in lines[0]
        )
        assert "delivered" in lines[1] and "web-tracks" in lines[1] and "id keep" in lines[1]
        assert "skip" not in out
