"""The watchdog device on real QEMU, under both drivers: a guest that arms it and then stops
feeding it (the test guest's feeder is killed, as a hung kernel would stop) is reset by the
device, with no probe, and the driver reports the watchdog's event."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from reconciler.drivers.base import DomainEvent, EventKind
from reconciler.model.actual import PowerState
from tests.e2e.conftest import E2E, CliRun, separate_driver
from tests.guest import boots, guest_image, wait_for_marker
from tests.helpers import poll, unique_name, write_manifest

pytestmark = pytest.mark.both_drivers
Reconcile = Callable[..., CliRun]
# tools/guest: feed the watchdog for 3 s after boot, then stop
HANG_AFTER_3S = "#cloud-config\nreconciler_test: 'reconciler-guest: watchdog 3'\n"


def test_a_guest_that_stops_feeding_its_watchdog_is_reset_and_the_event_reported(
    e2e: E2E, reconcile: Reconcile, tmp_path: Path
) -> None:
    name = unique_name("rcw")
    write_manifest(
        tmp_path, name, guest_image("qcow2"), None, "qcow2", memory="128MiB", networks=[],
        watchdog={"model": "i6300esb", "action": "reset"}, cloudInit={"userData": HANG_AFTER_3S},
    )  # fmt: skip
    events: list[DomainEvent] = []
    assert reconcile("--once", str(tmp_path)).code == 0
    console = e2e.state.instance(name).console_log
    with separate_driver(e2e) as watched:
        watched.watch(events.append, lambda _reason: None)
        wait_for_marker(console, "watchdog-stopped", timeout=240)
        # the device fires a few seconds later: the guest boots again, QEMU kept running
        poll(lambda: len(boots(console.read_text(errors="replace"))) > 2, 240, "a second boot")
        poll(
            lambda: any(e.name == name and e.kind is EventKind.WATCHDOG for e in events),
            60,
            f"the watchdog event of {name}",
        )
    assert e2e.state_of(name) is PowerState.RUNNING
    (event,) = [e for e in events if e.name == name and e.kind is EventKind.WATCHDOG][:1]
    assert event.detail == "action reset" and not event.may_echo_a_step
    exported = reconcile("export", name)
    assert "watchdog:" in exported.out and "action: reset" in exported.out
