"""``things.publish(topic, payload, qos=1)``: a program asks for acknowledged delivery of
one message, over the engine's ``program_qos`` default (0).  Random packet loss only delays
MQTT (TCP retransmits), but a link that goes down loses the QoS 0 messages sent into it
before the client notices, while QoS 1 ones are sent again after the reconnect: the same
call in-process and through an isolated program's pipe."""

from __future__ import annotations

import pytest

from runtime import ProgramHost, VirtualClock
from thingssim.sim.world import World

SENDER = """
n = 0
def tick():
    global n
    n += 1
    things.publish("out/seq", {"n": n}, qos=QOS)
    if n == 200:
        things.clear_interval(timer)
timer = things.set_interval(tick, 0.05)
"""


def _received(qos: int, seed: int = 3) -> list[int]:
    world = World(seed, trace=False)
    world.add_board("pi", "raspberry-pi-zero", resource_period=None)
    d = world.add_dispatcher(watch_console=False, watch_resources=False)
    got: list[int] = []
    d.transport.subscribe("out/seq", lambda msg: got.append(int(msg.payload[5:-1])), qos=1)
    world.run(1.0)
    world.wait(d.run_code("pi", "sender", SENDER.replace("QOS", str(qos))))
    link = world.network.links["pi"]
    world.at(world.clock.now() + 3.0, link.down)  # 20 s without a link, mid-stream
    world.at(world.clock.now() + 23.0, link.up)
    world.run(world.clock.now() + 90.0)
    return got


def test_qos1_delivers_every_message_across_a_link_cut() -> None:
    got = _received(qos=1)
    assert sorted(set(got)) == list(range(1, 201))


def test_qos0_loses_the_ones_sent_into_the_cut() -> None:
    got = _received(qos=0)
    assert 0 < len(set(got)) < 200  # so the QoS 1 case above shows something
    assert got == sorted(got)  # what arrives is in order


def test_bad_qos_is_a_clear_error_at_the_call() -> None:
    host = ProgramHost("things.publish('a', 1, qos=2)", code_name="bad",
                       clock=VirtualClock())
    host.start()
    assert host.status.value == "Crashed"
    assert "qos must be 0, 1 or None" in (host.error or "")


def test_qos_travels_through_an_isolated_programs_pipe() -> None:
    """The child's publish frame carries the QoS to the worker (and omits it when None)."""
    pytest.importorskip("asyncio")
    import asyncio

    from runtime.clock import AsyncioClock
    from runtime.isolation import ProcessProgram

    seen: list[tuple] = []

    async def main() -> None:
        clock = AsyncioClock(asyncio.get_running_loop())
        prog = ProcessProgram(clock=clock, source="things.publish('a', 1, qos=1)\n"
                              "things.publish('b', 2)\n", code_name="q", instance_id="q.1",
                              publish=lambda *args: seen.append(args))
        prog.start()
        for _ in range(200):
            if len(seen) == 2:
                break
            await asyncio.sleep(0.05)
        prog.kill()

    asyncio.run(main())
    assert seen == [("a", b"1", 1), ("b", b"2")]


def test_scenario_boards_take_program_qos(tmp_path) -> None:
    from thingssim.sim.scenario import Scenario, ScenarioError

    toml = tmp_path / "s.toml"
    toml.write_text('duration = 1.0\n[[boards]]\nname = "b"\nprogram_qos = 1\n')
    world = Scenario.from_toml(toml).build_world()
    assert world.boards["b"].engine.program_qos == 1
    toml.write_text('duration = 1.0\n[[boards]]\nname = "b"\nprogram_qos = 2\n')
    with pytest.raises(ScenarioError, match="program_qos must be 0 or 1"):
        Scenario.from_toml(toml)


def test_worker_config_takes_program_qos() -> None:
    from runtime.worker import ConfigError, WorkerConfig

    base = {"pubsub_url": "mqtt://localhost:1883", "id": "w1"}
    assert WorkerConfig.from_dict({**base, "program_qos": 1}).program_qos == 1
    with pytest.raises(ConfigError, match="program_qos must be 0 or 1"):
        WorkerConfig.from_dict({**base, "program_qos": True})
