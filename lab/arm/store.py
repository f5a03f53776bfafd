"""All state of the emulator, one lock around it, and its persistence under --state-dir.

Layout (also the JSON file's layout)::

    subscriptions/<sub>/resourceGroups/<rg>/{body, resources/<lowercased id> -> {body, lab}}
    operations/<id>      long-running operations (see models/base.py)
    runCommands          what run command was asked to run, in order
    settings             what the lab asked for: operation durations, faults, run-command output
    snapshotFamilies     incremental-snapshot families, keyed by the source disk's uniqueId:
                         the next sequence number and recent creation times (models/disks.py)
    grants               the blob front's URLs (snapshot Read grants, guest disks), keyed by grant
                         id: what each reaches and the hash of its signature (models/grants.py)

Every change is written to ``state.json`` (temp file + rename) before the request that made it
is answered, so a restart loses nothing. Concurrent requests share one write (group commit).
"""

from __future__ import annotations

import json
import logging
import os
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

log = logging.getLogger("lab.arm")

FORMAT = 1


def empty_state() -> dict[str, Any]:
    return {"format": FORMAT, "subscriptions": {}, "operations": {}, "runCommands": [], "settings": {},
            "snapshotFamilies": {}, "grants": {}}


class Persister:
    """Writes the state file from one thread; callers wait until their change is on disk."""

    def __init__(self, path: Path, dump: Callable[[], str]) -> None:
        self.path = path
        self._dump = dump
        self._cond = threading.Condition()
        self._wanted = 0
        self._written = 0
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="arm-persist", daemon=True)
        self._thread.start()

    def bump(self) -> int:
        with self._cond:
            self._wanted += 1
            self._cond.notify_all()
            return self._wanted

    def wait(self, version: int) -> None:
        with self._cond:
            while self._written < version and self._thread.is_alive():
                self._cond.wait(1.0)

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._written >= self._wanted and not self._stopping:
                    self._cond.wait()
                if self._written >= self._wanted and self._stopping:
                    return
                target = self._wanted
            try:
                text = self._dump()  # takes the store lock: a consistent snapshot
                tmp = self.path.with_suffix(".tmp")
                tmp.write_text(text)
                os.replace(tmp, self.path)
            except Exception:  # keep serving; the next change retries the write
                log.exception("cannot write %s", self.path)
            with self._cond:
                self._written = max(self._written, target)
                self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(10)


class Store:
    def __init__(self, state_dir: Path | None) -> None:
        self.lock = threading.RLock()
        self.data = empty_state()
        self._changed = False
        self._post: list[Callable[[], None]] = []
        self.path = state_dir / "state.json" if state_dir else None
        if self.path and self.path.exists():
            loaded = json.loads(self.path.read_text())
            if loaded.get("format") == FORMAT:
                self.data = loaded
            else:
                log.warning("%s has format %s, not %s: starting empty", self.path, loaded.get("format"), FORMAT)
        self.persister = Persister(self.path, self._dump) if self.path else None

    def _dump(self) -> str:
        with self.lock:
            return json.dumps(self.data, separators=(",", ":"))

    # -- transactions -------------------------------------------------------------------
    @contextmanager
    def txn(self) -> Iterator["Store"]:
        """Hold the lock; after it, persist what changed and run deferred blob work."""
        version = 0
        with self.lock:
            self._changed = False
            try:
                yield self
            finally:
                post, self._post = self._post, []
                if self._changed and self.persister:
                    version = self.persister.bump()
                self._changed = False
        if version:
            self.persister.wait(version)
        for action in post:
            try:
                action()
            except Exception:  # blob clean-up is best effort, like Azure's own garbage collection
                log.exception("deferred action failed")

    def touch(self) -> None:
        self._changed = True

    def defer(self, action: Callable[[], None]) -> None:
        """Run `action` after the lock is released (blob deletions and the like)."""
        self._post.append(action)

    def reset(self) -> None:
        with self.txn():
            self.data = empty_state()
            self.touch()

    def close(self) -> None:
        if self.persister:
            self.persister.close()

    # -- structure ---------------------------------------------------------------------
    @property
    def subscriptions(self) -> dict[str, Any]:
        return self.data["subscriptions"]

    @property
    def operations(self) -> dict[str, Any]:
        return self.data["operations"]

    @property
    def settings(self) -> dict[str, Any]:
        return self.data.setdefault("settings", {})

    @property
    def snapshot_families(self) -> dict[str, Any]:
        return self.data.setdefault("snapshotFamilies", {})

    @property
    def grants(self) -> dict[str, Any]:
        return self.data.setdefault("grants", {})

    def subscription(self, sub: str, create: bool = False) -> dict[str, Any] | None:
        entry = self.subscriptions.get(sub.lower())
        if entry is None and create:
            entry = self.subscriptions[sub.lower()] = {"id": sub, "resourceGroups": {}}
            self.touch()
        return entry

    def resource_groups(self, sub: str) -> dict[str, Any]:
        entry = self.subscription(sub)
        return entry["resourceGroups"] if entry else {}

    def resource_group(self, sub: str, rg: str) -> dict[str, Any] | None:
        return self.resource_groups(sub).get(rg.lower())

    def records(self, sub: str, rg: str | None = None) -> Iterator[dict[str, Any]]:
        groups = self.resource_groups(sub)
        selected = [groups.get(rg.lower())] if rg else list(groups.values())
        for group in selected:
            if group:
                yield from list(group["resources"].values())
