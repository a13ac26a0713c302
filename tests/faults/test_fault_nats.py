"""NATS under steady load: the single server SIGKILLed and restarted (same port, same store),
and, in a 3-node cluster with KRENALIS_NATS_REPLICAS=3, the stream leader or a follower
SIGKILLed and restarted.

Every acknowledged event must end up in the warehouse exactly once and at the webhook at least
once: a 200 means the event was stored (fsynced on the single server) before the answer.
"""

from __future__ import annotations

import asyncio
import contextlib

import nats
import pytest
from faults_sinks import HookScript, Receiver, hook_probe, warehouse_probe
from faults_support import FaultClock, exercise, workspace

from krenalis.stream.layout import STREAM, consumer_name

pytestmark = pytest.mark.timeout(180)


async def start_serve(stack, dsn: str, hook_url: str, **env: str):
    stack.write_workspace(workspace(dsn=dsn, hook_url=hook_url))
    serve = stack.start("serve", "serve", stack.env(**env))
    await serve.wait_healthy(timeout=60)
    return serve


async def test_nats_server_sigkill_and_restart(stack_factory, nats_server, warehouse_dsn):
    down = 3.0
    stack = stack_factory(nats_server.url)
    script = HookScript()
    async with Receiver(script) as rx:
        # AckWait 5 s: acks lost with the connection come back after AckWait (30 s by default).
        serve = await start_serve(stack, warehouse_dsn, rx.url, KRENALIS_NATS_ACK_WAIT="5s")
        probes = [warehouse_probe(warehouse_dsn), hook_probe(script)]
        extra = {"down_s": down, "ack_wait_s": 5}
        clock = FaultClock("sigkill nats-server (single, file)", extra=extra)

        async def inject(load) -> None:
            clock.extra["killed_mid_request"] = await load.wait_in_flight()
            clock.begin()
            nats_server.kill()
            await asyncio.sleep(down)
            await asyncio.to_thread(nats_server.start)  # same port, same store directory
            clock.end()

        await exercise(serve.base_url, probes, clock, inject, nats_server.url)
    assert serve.running()


HOOK_CONSUMER = consumer_name("web-hook", 0)


async def leaders(urls: list[str]) -> tuple[str, dict[str, str]]:
    """The stream leader, and the leader of each consumer."""
    nc = await nats.connect(urls)
    try:
        js = nc.jetstream(timeout=10)
        stream = (await js.stream_info(STREAM)).cluster.leader
        consumers = {c.name: c.cluster.leader for c in await js.consumers_info(STREAM)}
        return stream, consumers
    finally:
        await nc.close()


async def move_consumer_leader(urls: list[str], consumer: str, *, onto_stream_leader: bool) -> None:
    """Step the consumer's leader down until it is (or is not) the stream leader's node."""
    nc = await nats.connect(urls)
    try:
        js = nc.jetstream(timeout=10)
        for _ in range(30):
            stream = (await js.stream_info(STREAM)).cluster.leader
            leader = (await js.consumer_info(STREAM, consumer)).cluster.leader
            if leader and (leader == stream) == onto_stream_leader:
                return
            with contextlib.suppress(Exception):
                await nc.request(
                    f"$JS.API.CONSUMER.LEADER.STEPDOWN.{STREAM}.{consumer}", b"", timeout=5
                )
            await asyncio.sleep(0.5)
        raise AssertionError(f"could not place the leader of {consumer}")
    finally:
        await nc.close()


async def cluster_fault(stack_factory, nats_cluster, dsn: str, *, leader: bool) -> None:
    """Kill the stream leader (which also leads the webhook pipeline's consumer), or a follower
    that leads the webhook pipeline's consumer; restart it after `down` seconds."""
    down = 10.0
    await nats_cluster.wait_jetstream()
    urls = nats_cluster.urls
    stack = stack_factory(",".join(urls))
    script = HookScript()
    async with Receiver(script) as rx:
        serve = await start_serve(stack, dsn, rx.url, KRENALIS_NATS_REPLICAS="3")
        await move_consumer_leader(urls, HOOK_CONSUMER, onto_stream_leader=leader)
        probes = [warehouse_probe(dsn), hook_probe(script)]
        role = "leader" if leader else "follower"
        clock = FaultClock(f"sigkill stream {role} (3-node cluster, R3)", extra={"down_s": down})

        async def inject(load) -> None:
            stream, consumers = await leaders(urls)
            victim = nats_cluster.node_named(stream if leader else consumers[HOOK_CONSUMER])
            clock.extra["victim_led"] = sorted(
                ["stream"] * (victim.server_name == stream)
                + [c for c, node in consumers.items() if node == victim.server_name]
            )
            clock.begin()
            victim.kill()
            await asyncio.sleep(down)
            await asyncio.to_thread(victim.start)
            clock.end()

        line = await exercise(serve.base_url, probes, clock, inject, ",".join(urls))
    assert serve.running()
    crashes = serve.log_count("Worker crashed")
    if crashes:
        raise AssertionError(
            f"bug: {crashes} worker crash(es) while a consumer had no leader (fetch raised "
            f"ServiceUnavailableError); webhook lag {line['max_delivery_lag_s']['webhook']}s"
        )


@pytest.mark.faults
@pytest.mark.cluster
async def test_cluster_stream_leader_sigkill(stack_factory, nats_cluster, warehouse_dsn):
    await cluster_fault(stack_factory, nats_cluster, warehouse_dsn, leader=True)


@pytest.mark.faults
@pytest.mark.cluster
async def test_cluster_follower_sigkill(stack_factory, nats_cluster, warehouse_dsn):
    await cluster_fault(stack_factory, nats_cluster, warehouse_dsn, leader=False)
