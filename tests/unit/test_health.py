"""Health, without a guest: probes in manifests (located errors), the thresholds that make
conditions, cloud-init's console lines, the guest agent's addresses, the health record, and
the prober over the fake driver's scripted agent."""

from __future__ import annotations

import base64
import json
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from reconciler.clock import Clock
from reconciler.health.addresses import agent_addresses, neighbour_table
from reconciler.health.cloudinit import CloudInitConsole, CloudInitState, result_errors
from reconciler.health.conditions import (
    Condition,
    ConditionStatus,
    ConditionType,
    ProbeResult,
    ProbeTracker,
)
from reconciler.health.prober import Prober
from reconciler.health.record import read_health
from reconciler.layout import StateLayout
from reconciler.manifests.loader import load_manifests
from reconciler.model.actual import PowerState
from reconciler.model.desired import NicType, PortForward, ProbeKind, ProbeSpec
from reconciler.model.machine import Nic
from reconciler.testing.fake import FakeDomain, FakeDriver
from tests.unit.test_change_rules import BASE
from tests.unit.test_manifests import VALID, errors_of

FORWARD = """\
  networks:
    - type: user
      ports: [{host: 2222, guest: 22}]
"""


def test_probes_are_read_with_kubernetes_defaults(tmp_path: Path) -> None:
    text = VALID + FORWARD + "  guestAgent: true\n"
    text += "  readiness: {tcp: {port: 22}, periodSeconds: 2}\n"
    text += "  liveness: {exec: {command: [test, -e, /run/alive]}, failureThreshold: 5}\n"
    (tmp_path / "m.yaml").write_text(text)
    (spec,) = load_manifests(tmp_path).instances
    assert spec.readiness == ProbeSpec(ProbeKind.TCP, port=22, period_seconds=2)
    assert spec.liveness is not None
    assert spec.liveness.command == ("test", "-e", "/run/alive")
    assert (spec.liveness.timeout_seconds, spec.liveness.failure_threshold) == (1, 5)
    assert spec.liveness.describe() == "exec test -e /run/alive"


@pytest.mark.parametrize(
    ("probe", "message"),
    [
        ("{tcp: {port: 22}, http: {port: 80}}", "a probe names exactly one of"),
        ("{periodSeconds: 3}", "(this: none)"),
        ("{guestAgent: ping}", "a guestAgent probe needs guestAgent: true"),
        ("{tcp: {port: 80}}", "guest port 80 cannot be reached from the host"),
        ("{http: {port: 22, path: 'x y'}}", "/spec/readiness/http/path"),
        ("{cloudInit: started}", "/spec/readiness/cloudInit"),
        ("{tcp: {port: 22}, periodSeconds: 0}", "/spec/readiness/periodSeconds"),
    ],
)
def test_a_bad_probe_is_a_located_error(tmp_path: Path, probe: str, message: str) -> None:
    errors = errors_of(tmp_path, VALID + FORWARD + f"  readiness: {probe}\n")
    assert len(errors) == 1 and message in errors[0], errors
    assert errors[0].startswith(f"{tmp_path}/m.yaml:")


TCP = ProbeSpec(ProbeKind.TCP, port=22, period_seconds=5, success_threshold=2)


def test_readiness_needs_its_successes_in_a_row_and_liveness_its_failures() -> None:
    ready = ProbeTracker.begin(TCP, ConditionType.READY, started=100.0, wall=1000.0)
    assert ready.condition.status is ConditionStatus.FALSE and not ready.due(99.0)
    assert ready.due(100.0)
    assert not ready.record(ProbeResult(True, "up"), 100.0, 1000.0)  # 1 of 2
    assert not ready.due(104.0) and ready.due(105.0)
    assert ready.record(ProbeResult(True, "up"), 105.0, 1005.0)
    assert status_of(ready) is ConditionStatus.TRUE
    assert ready.condition.last_transition == 1005.0
    assert ready.condition.message == "tcp port 22: up"
    live_spec = replace(TCP, failure_threshold=3, initial_delay_seconds=30)
    live = ProbeTracker.begin(live_spec, ConditionType.LIVE, started=100.0, wall=1000.0)
    assert live.condition.status is ConditionStatus.TRUE and not live.due(129.0)
    for moment in (130.0, 135.0):
        assert not live.record(ProbeResult(False, "refused"), moment, moment)
    assert live.record(ProbeResult(False, "refused"), 140.0, 140.0)
    assert status_of(live) is ConditionStatus.FALSE
    assert live.condition.message == "tcp port 22: refused (3 in a row)"


def test_liveness_counts_failures_only_once_it_succeeded_this_boot_or_after_its_delay() -> None:
    spec = replace(TCP, failure_threshold=1)
    live = ProbeTracker.begin(spec, ConditionType.LIVE, started=0.0, wall=0.0)
    for moment in (0.0, 5.0, 10.0):  # a slow boot: nothing listens yet
        assert not live.record(ProbeResult(False, "refused"), moment, moment)
    assert status_of(live) is ConditionStatus.TRUE and live.condition.reason == "NotYetAlive"
    live.record(ProbeResult(True, "up"), 15.0, 15.0)
    assert live.record(ProbeResult(False, "refused"), 20.0, 20.0)  # counted now
    delayed = ProbeTracker.begin(
        replace(spec, initial_delay_seconds=60), ConditionType.LIVE, 0.0, 0.0
    )
    assert delayed.record(ProbeResult(False, "refused"), 60.0, 60.0)  # its delay is over


FINISHED = (
    "Cloud-init v. 22.4.2 finished at Sun, 06 Dec 2026 17:13:55 +0000. Datasource "
    "DataSourceNoCloud [seed=/dev/sr0][dsmode=net].  Up 3.92 seconds\r\n"
)
BANNER = (
    "Cloud-init v. 22.4.2 running 'init-local' at Sun, 06 Dec 2026 17:13:53 +0000. Up 1.98 s.\r\n"
)
WARNING = (
    "[  12.5] cloud-init[321]: 2026-12-06 17:13:54,000 - util.py[WARNING]: Running module "
    "locale (<module 'cloudinit.config.cc_locale'>) failed\r\n"
)


def test_cloud_init_is_done_after_its_final_message_of_this_boot_only() -> None:
    console = CloudInitConsole()
    console.feed("garbage \x1b[31m\n" + BANNER[:20])
    assert console.state is CloudInitState.NOT_SEEN
    console.feed(BANNER[20:] + "login:\r\n" + FINISHED[:30])
    assert state_of(console) is CloudInitState.RUNNING
    console.feed(FINISHED[30:])
    assert state_of(console) is CloudInitState.DONE and console.version == "22.4.2"
    console.feed(BANNER)  # the guest rebooted: not done again until it says so
    assert state_of(console) is CloudInitState.RUNNING


def test_after_a_reboot_the_console_is_read_from_where_it_stood(tmp_path: Path) -> None:
    from reconciler.health.checks import ConsoleFollower

    log = tmp_path / "console.log"
    log.write_text(BANNER + FINISHED)
    follower = ConsoleFollower(log)
    assert follower.update().state is CloudInitState.DONE
    follower.skip_to_end()  # rebooted: the last boot's "finished" is not this boot's
    assert follower.update().state is CloudInitState.NOT_SEEN
    with log.open("a") as stream:
        stream.write(BANNER)
    assert follower.update().state is CloudInitState.RUNNING
    log.write_text(BANNER)  # a new QEMU truncated it: read from the start
    assert state_of(follower.update()) is CloudInitState.RUNNING


def test_cloud_init_errors_are_its_own_lines_cleaned_and_capped() -> None:
    console = CloudInitConsole()
    console.feed(BANNER + WARNING * 9 + "\x07bell\n" + FINISHED)
    assert console.state is CloudInitState.FAILED
    assert len(console.errors) == 5
    assert console.errors[0].startswith("[  12.5] cloud-init[321]: 2026-12-06")
    assert "finished with errors" in console.describe()
    assert result_errors(b'{"v1": {"errors": ["x\\u0007y"]}}') == ["xy"]
    assert result_errors(b'{"v1": {"errors": []}}') == []
    assert result_errors(b"[1]") is None and result_errors(b"\xff") is None


def test_guest_agent_addresses_keep_well_formed_ones_ipv4_first() -> None:
    reply = [
        {"name": "lo", "hardware-address": "00:00:00:00:00:00",
         "ip-addresses": [{"ip-address": "127.0.0.1"}]},
        {"name": "eth0", "hardware-address": "52:54:00:AA:BB:CC", "ip-addresses": [
            {"ip-address": "fe80::1"}, {"ip-address": "2001:db8::5"},
            {"ip-address": "192.0.2.7"}]},
        {"name": "evil", "hardware-address": "52:54:00:00:00:01",
         "ip-addresses": [{"ip-address": "1.2.3.4; rm -rf /"}, {"ip-address": "0.0.0.0"},
                          {"ip-address": "224.0.0.1"}, {"ip-address": "::1"}]},
        "not an interface",
    ]  # fmt: skip
    assert agent_addresses(reply) == {"52:54:00:aa:bb:cc": "192.0.2.7"}
    assert agent_addresses({"error": 1}) == {}


def test_neighbour_table(tmp_path: Path) -> None:
    arp = tmp_path / "arp"
    arp.write_text(
        "IP address       HW type     Flags       HW address            Mask     Device\n"
        "192.168.122.5    0x1         0x2         52:54:00:12:34:56     *        virbr0\n"
        "192.168.122.9    0x1         0x0         00:00:00:00:00:00     *        virbr0\n"
    )
    assert neighbour_table(arp) == {"52:54:00:12:34:56": "192.168.122.5"}
    assert neighbour_table(tmp_path / "missing") == {}


def test_conditions_round_trip_through_json() -> None:
    condition = Condition(ConditionType.READY, ConditionStatus.TRUE, "ProbeSucceeded", "ok", 1e9)
    assert Condition.from_json(condition.as_json()) == condition
    assert Condition.from_json({"type": "Ready"}) is None


def status_of(tracker: ProbeTracker) -> ConditionStatus:
    return tracker.condition.status


def state_of(console: CloudInitConsole) -> CloudInitState:
    return console.state


def conditions_of(prober: Prober) -> tuple[Condition, Condition]:
    conditions = prober.conditions("web")
    assert conditions is not None
    return conditions


NIC = Nic(NicType.USER, "52:54:00:00:00:01", ports=(PortForward(2222, 22),))


class ManualClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def clock(self) -> Clock:
        return Clock(monotonic=lambda: self.now, wall=lambda: self.now)


def agent(alive: threading.Event) -> Any:
    def answer(command: str, arguments: dict[str, Any] | None) -> Any:
        if command == "guest-ping":
            return {}
        if command == "guest-exec":
            return {"pid": 7}
        if command == "guest-exec-status":
            code = 0 if alive.is_set() else 1
            return {"exited": True, "exitcode": code, "out-data": base64.b64encode(b"hi").decode()}
        if command == "guest-network-get-interfaces":
            return [
                {
                    "hardware-address": NIC.mac,
                    "ip-addresses": [{"ip-address": "10.0.2.15"}],
                }
            ]
        raise AssertionError(command)

    return answer


def test_the_prober_turns_agent_checks_into_conditions_and_records_them(tmp_path: Path) -> None:
    machine = replace(BASE, guest_agent=True, nics=(NIC,))
    driver = FakeDriver()
    alive = threading.Event()
    alive.set()
    driver.domains["web"] = FakeDomain(machine, PowerState.RUNNING, agent=agent(alive))
    layout = StateLayout(tmp_path)
    layout.instance("web").directory.mkdir(parents=True)
    clock = ManualClock()
    changes: list[tuple[str, str]] = []
    prober = Prober(
        driver, layout, clock.clock(), lambda n, k, c: changes.append((k.value, c.status.value))
    )
    probes: dict[ConditionType, ProbeSpec | None] = {
        ConditionType.READY: ProbeSpec(ProbeKind.GUEST_AGENT, period_seconds=1),
        ConditionType.LIVE: ProbeSpec(
            ProbeKind.EXEC, command=("true",), failure_threshold=2, period_seconds=1
        ),
    }
    prober.watch("web", probes, machine, "running")
    for future in prober.tick():
        future.result()
    ready, live = conditions_of(prober)
    assert (ready.status, ready.reason) == (ConditionStatus.TRUE, "ProbeSucceeded")
    assert live.status is ConditionStatus.TRUE and live.message == "exec true: exited 0: hi"
    assert prober.addresses("web")[0].source == "guest agent"
    assert ("Ready", "True") in changes and prober.liveness_failure("web") is None
    alive.clear()
    for _ in range(2):
        clock.now += 1
        for future in prober.tick():
            future.result()
    failure = prober.liveness_failure("web")
    assert failure == "exec true: exited 1: hi (2 in a row)"
    recorded_probes, conditions = read_health(layout.instance("web"))
    assert recorded_probes == probes
    assert conditions[ConditionType.LIVE].status is ConditionStatus.FALSE
    prober.restarted("web")  # a new boot: alive again until proven otherwise
    assert prober.liveness_failure("web") is None
    prober.watch("web", probes, None, "shutoff")
    ready, live = conditions_of(prober)
    assert (ready.status, ready.reason, ready.message) == (
        ConditionStatus.FALSE, "NotRunning", "the domain is shutoff",
    )  # fmt: skip
    prober.close()
    assert (
        json.loads(layout.instance("web").health.read_text())["probes"]["Ready"]["kind"]
        == "guestAgent"
    )


def test_addresses_come_from_the_agent_then_the_leases_then_the_neighbours(tmp_path: Path) -> None:
    from reconciler.health.addresses import observe_addresses

    agent_nic = Nic(NicType.NETWORK, "52:54:00:00:00:0a", source="default")
    leased = Nic(NicType.NETWORK, "52:54:00:00:00:0b", source="default")
    bridged = Nic(NicType.BRIDGE, "52:54:00:00:00:0c", source="br0")
    unknown = Nic(NicType.BRIDGE, "52:54:00:00:00:0d", source="br0")
    machine = replace(BASE, guest_agent=True, nics=(agent_nic, leased, bridged, unknown))
    driver = FakeDriver()
    reply = [{"hardware-address": agent_nic.mac, "ip-addresses": [{"ip-address": "192.0.2.10"}]}]
    driver.domains["web"] = FakeDomain(machine, PowerState.RUNNING, agent=lambda _c, _a: reply)
    driver.leases["default"] = {agent_nic.mac: "192.0.2.99", leased.mac: "192.0.2.11"}
    arp = tmp_path / "arp"
    arp.write_text(f"IP address HW type Flags HW address Mask Device\n"
                   f"192.0.2.12 0x1 0x2 {bridged.mac} * br0\n")  # fmt: skip
    found = observe_addresses(driver, "web", machine, neighbours=arp)
    assert [(a.address, a.source) for a in found] == [
        ("192.0.2.10", "guest agent"),  # believed over the lease
        ("192.0.2.11", "DHCP lease"),
        ("192.0.2.12", "neighbour table"),
        (None, "not observed"),
    ]


def test_a_prober_told_again_what_it_knew_rewrites_nothing_even_after_a_restart(
    tmp_path: Path,
) -> None:
    driver = FakeDriver()
    layout = StateLayout(tmp_path)
    paths = layout.instance("web")
    paths.directory.mkdir(parents=True)
    clock = ManualClock()
    probes: dict[ConditionType, ProbeSpec | None] = {}
    prober = Prober(driver, layout, clock.clock())
    prober.watch("web", probes, None, "shutoff")
    written = paths.health.stat()
    since = conditions_of(prober)[0].last_transition
    clock.now += 60  # every pass of a daemon tells it again
    prober.watch("web", probes, None, "shutoff")
    prober.close()
    assert paths.health.stat().st_mtime_ns == written.st_mtime_ns
    restarted = Prober(driver, layout, clock.clock())  # the daemon again, later
    clock.now += 60
    restarted.watch("web", probes, None, "shutoff")
    assert conditions_of(restarted)[0].last_transition == since  # not since the restart
    restarted.close()
    assert (paths.health.stat().st_ino, paths.health.stat().st_mtime_ns) == (
        written.st_ino,
        written.st_mtime_ns,
    )
    machine = replace(BASE, nics=(NIC,))
    driver.domains["web"] = FakeDomain(machine, PowerState.RUNNING)
    moved = Prober(driver, layout, clock.clock())
    moved.watch("web", probes, machine, "running")  # a status that moved is written
    moved.close()
    ready, _ = read_health(paths)[1].values()
    assert (ready.status, ready.last_transition) == (ConditionStatus.TRUE, clock.now)


def test_a_record_the_prober_could_not_keep_is_written_once_its_directory_is_there(
    tmp_path: Path,
) -> None:
    layout = StateLayout(tmp_path)
    paths = layout.instance("web")
    prober = Prober(FakeDriver(), layout, ManualClock().clock())
    prober.watch("web", {}, None, "shutoff")  # no instance directory (yet): nothing kept
    assert not paths.health.exists()
    paths.directory.mkdir(parents=True)
    prober.watch("web", {}, None, "shutoff")  # told the same again
    prober.close()
    assert read_health(paths)[1][ConditionType.READY].reason == "NotRunning"
