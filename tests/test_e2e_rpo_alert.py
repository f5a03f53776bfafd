"""The RPO alert on the lab: the module's own sshd of app02 stops, the RPO monitor sees the
newest point age past the threshold, the automation's webhook reaches the lab's receiver;
the sshd starts again, the dispatcher's next cycle makes a point, the recovery arrives
(the fixtures: tests/continuous_lab.py)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from lab.webhook import read_record
from tests.continuous_lab import ITEM

pytestmark = pytest.mark.lab

OWN_PORT = 2203  # this module's sshd of app02 (test_e2e_continuous has 2202)


def _alerts(record: Path, site: str, event: str) -> list[dict]:
    out = []
    for entry in read_record(record):
        body = entry.get("body") or {}
        if isinstance(body, dict) and body.get("site") == site:
            inner = json.loads(body.get("body") or "{}")
            if inner.get("event") == event and inner.get("item") == ITEM:
                out.append({**inner, "received": entry["time"], "subject": body.get("subject")})
    return out


def _monitor_until(fast_site: str, record: Path, site: str, event: str, timeout: float) -> list[dict]:
    from drbook.flows.rpo_monitor import rpo_monitor_flow

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rpo_monitor_flow(site_path=fast_site)
        found = _alerts(record, site, event)
        if found:
            return found
        time.sleep(3)
    raise AssertionError(f"no {event} alert for {ITEM} of {site} reached the webhook within {timeout:.0f}s")


def test_the_rpo_alert_reaches_the_webhook_when_sshd_stops_and_the_recovery_after(
        lab, protected, fast_site, sshd, dispatcher):
    from drbook.alerts import ensure_alerts

    site = protected
    record = Path(lab["webhook"]["record"])
    name = site.cfg.site
    assert site.cfg.alerts is not None and site.cfg.alerts.webhook_url == lab["webhook"]["url"]
    made = ensure_alerts(site.cfg)
    assert ensure_alerts(site.cfg) == made  # idempotent
    try:
        sshd.stop()
        breached = _monitor_until(fast_site, record, name, "drbook.rpo.breached", timeout=150)
        assert breached[0]["payload"]["lag_seconds"] > 45 and f"RPO breached on {ITEM}" in breached[0]["subject"]
        assert site.vault.item(ITEM).rpo_breached
        sshd.start()
        recovered = _monitor_until(fast_site, record, name, "drbook.rpo.recovered", timeout=150)
        assert recovered[0]["payload"]["lag_seconds"] <= 45
        assert not site.vault.item(ITEM).rpo_breached
        # one alert per crossing: the monitor ran many times, the automation fired once each way
        assert len(_alerts(record, name, "drbook.rpo.breached")) == 1
    finally:
        if sshd.proc is None or sshd.proc.poll() is not None:
            sshd.start()
        ensure_alerts(site.cfg.model_copy(update={"alerts": None}))
