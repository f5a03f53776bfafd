"""The vault against a real Azurite (HTTPS, lab CA): documents, ETags, leases, audit,
transitions, and the blob error table."""

from __future__ import annotations

import datetime as dt
import threading
import time
import uuid

import pytest
from tests.blob_fixtures import AzuriteInfo, azurite, azurite_blob  # noqa: F401  (fixtures)
from pydantic import BaseModel

from drbook.adapters.blobstore import blob_service, blob_service_from, map_blob_errors, redact
from drbook.config import AzureConfig, ContainerNames, SiteConfig
from drbook.errors import (
    BlobStoreError,
    ConflictError,
    LeaseHeldError,
    NotFoundError,
    StateTransitionError,
    VaultError,
)
from drbook.models import AuditEntry, ItemState, Policy, ProtectedItem, RecoveryPoint, utcnow
from drbook.vault import (
    Vault,
    audit_key,
    drill_key,
    failover_key,
    group_key,
    inventory_key,
    item_key,
    lock_key,
    manifest_key,
    point_key,
    submap_key,
)
from lab.ca import ensure_certs


class Counter(BaseModel):
    n: int = 0
    writers: list[str] = []


@pytest.fixture
def vault(azurite_blob) -> Vault:
    v = Vault(azurite_blob.get_container_client(f"vault-{uuid.uuid4().hex[:12]}"), actor="tester")
    v.ensure()
    return v


def _item(name: str = "db01", state: ItemState = ItemState.UNPROTECTED) -> ProtectedItem:
    return ProtectedItem(name=name, machine=name, state=state)


# -- documents ---------------------------------------------------------------------------


def test_create_get_update_delete_list(vault: Vault):
    vault.ensure()  # idempotent
    etag = vault.put("policies/gold.json", Policy(name="gold", rpo_threshold_minutes=5), create_only=True)
    got, got_etag = vault.get_with_etag("policies/gold.json", Policy)
    assert got.rpo_threshold_minutes == 5 and got_etag == etag

    vault.put("policies/silver.json", Policy(name="silver"))
    vault.put("points/db01/p1.json", RecoveryPoint(id="p1", item="db01", time=utcnow(), consistency="crash"))
    assert vault.keys("policies/") == ["policies/gold.json", "policies/silver.json"]
    assert [p.name for p in vault.list("policies/", Policy)] == ["gold", "silver"]

    def tighten(p: Policy) -> None:
        p.rpo_threshold_minutes = 1

    updated = vault.update("policies/gold.json", Policy, tighten)
    assert updated.rpo_threshold_minutes == 1
    assert vault.get("policies/gold.json", Policy).rpo_threshold_minutes == 1

    vault.delete("policies/gold.json")
    assert vault.find("policies/gold.json", Policy) is None
    vault.delete("policies/gold.json")  # missing_ok by default
    with pytest.raises(NotFoundError, match="no vault document 'policies/gold.json'"):
        vault.delete("policies/gold.json", missing_ok=False)
    with pytest.raises(NotFoundError, match="no vault document 'policies/gold.json'"):
        vault.get("policies/gold.json", Policy)
    with pytest.raises(NotFoundError, match="'policies/gold.json'"):
        vault.update("policies/gold.json", Policy, tighten)


def test_bytes_and_delete_prefix(vault: Vault):
    vault.put_bytes("manifests/db01/p1/disk0.bin", b"\x00\x01" * 1000)
    vault.put_bytes("manifests/db01/p1/disk1.bin", b"x")
    vault.put_bytes("manifests/db02/p1/disk0.bin", b"y")
    assert vault.get_bytes("manifests/db01/p1/disk0.bin") == b"\x00\x01" * 1000
    assert vault.delete_prefix("manifests/db01/") == 2
    assert vault.keys("manifests/") == ["manifests/db02/p1/disk0.bin"]
    with pytest.raises(ValueError):
        vault.delete_prefix("")
    with pytest.raises(NotFoundError):
        vault.get_bytes("manifests/db01/p1/disk0.bin")


def test_missing_container_is_named(azurite_blob):
    v = Vault(azurite_blob.get_container_client("no-such-vault"))
    with pytest.raises(NotFoundError, match="vault container 'no-such-vault' does not exist"):
        v.find("items/db01.json", ProtectedItem)
    with pytest.raises(NotFoundError, match="vault container 'no-such-vault' does not exist"):
        v.put("items/db01.json", _item())


def test_invalid_document_names_the_key(vault: Vault):
    vault.put_bytes("items/broken.json", b'{"name": "broken"}')
    with pytest.raises(Exception, match="vault document 'items/broken.json' is not a valid ProtectedItem"):
        vault.get("items/broken.json", ProtectedItem)


def test_stale_etag_and_create_only_conflict(vault: Vault):
    etag1 = vault.put("c.json", Counter(n=1), create_only=True)
    etag2 = vault.put("c.json", Counter(n=2), etag=etag1)
    assert etag2 != etag1
    with pytest.raises(ConflictError, match="'c.json' changed since it was read") as caught:
        vault.put("c.json", Counter(n=3), etag=etag1)
    assert caught.value.retryable
    with pytest.raises(ConflictError, match="'c.json' already exists"):
        vault.put("c.json", Counter(n=4), create_only=True)
    assert vault.get("c.json", Counter).n == 2


def test_two_concurrent_writers_lose_no_update(azurite: AzuriteInfo, vault: Vault):
    vault.put("counter.json", Counter(), create_only=True)
    calls = {"a": 0, "b": 0}
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def writer(name: str) -> None:
        # Each writer has its own client, as two process servers would.
        mine = Vault(azurite.client().get_container_client(vault.name), actor=name)

        def bump(c: Counter) -> Counter:
            calls[name] += 1
            return c.model_copy(update={"n": c.n + 1, "writers": c.writers + [name]})

        start.wait()
        try:
            for _ in range(20):
                mine.update("counter.json", Counter, bump, attempts=50)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in calls]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    final = vault.get("counter.json", Counter)
    assert final.n == 40
    assert final.writers.count("a") == 20 and final.writers.count("b") == 20
    # Attempts beyond 40 are conflicts that were re-read and re-applied, not lost.
    print(f"update calls: {calls}, conflicts retried: {sum(calls.values()) - 40}")


def test_update_gives_up_with_a_clear_message(vault: Vault):
    vault.put("c.json", Counter(), create_only=True)
    other = Vault(vault.container)

    def racing(c: Counter) -> Counter:
        other.put("c.json", Counter(n=c.n + 100))  # someone else always writes first
        return c.model_copy(update={"n": c.n + 1})

    with pytest.raises(ConflictError, match=r"'c.json' kept changing under 3 attempts"):
        vault.update("c.json", Counter, racing, attempts=3)
    assert vault.get("c.json", Counter).n == 300


# -- protected items and transitions --------------------------------------------------------


def test_items_and_save_item(vault: Vault):
    vault.save_item(_item("app01"))
    vault.save_item(_item("db01"))
    vault.save_item(_item("db01").model_copy(update={"agent_version": "1.2"}))  # still unprotected: idempotent
    assert vault.item("db01").agent_version == "1.2"
    assert [i.name for i in vault.items()] == ["app01", "db01"]
    assert vault.find_item("web01") is None
    with pytest.raises(NotFoundError, match=r"^no protected item 'web01' \(known: app01, db01\)$"):
        vault.item("web01")

    vault.transition("db01", ItemState.INITIAL_REPLICATION)
    with pytest.raises(ConflictError, match="'db01' already exists \\(state initial-replication\\)"):
        vault.save_item(_item("db01"))


def test_legal_transition_writes_state_and_audit(vault: Vault):
    vault.save_item(_item("db01", ItemState.PROTECTED))
    before = vault.item("db01")

    def record(item: ProtectedItem) -> None:
        item.failover_run_id = "run-1"
        item.failover_point_id = "p-7"

    moved = vault.transition("db01", ItemState.FAILED_OVER, flow_run_id="run-1", reason="drill gone wrong", mutate=record)
    assert moved.state == ItemState.FAILED_OVER
    stored = vault.item("db01")
    assert stored.state == ItemState.FAILED_OVER and stored.failover_point_id == "p-7"
    assert stored.updated > before.updated and stored.created == before.created

    [entry] = vault.audit_log("db01")
    assert (entry.actor, entry.item, entry.action) == ("tester", "db01", "failover")
    assert (entry.from_state, entry.to_state) == (ItemState.PROTECTED, ItemState.FAILED_OVER)
    assert entry.flow_run_id == "run-1" and entry.detail == {"reason": "drill gone wrong"}

    vault.transition("db01", ItemState.COMMITTED)
    assert [e.action for e in vault.audit_log("db01")] == ["failover", "commit"]


def test_illegal_transition_touches_nothing(vault: Vault):
    vault.save_item(_item("db01", ItemState.FAILED_OVER))
    _, etag = vault.get_with_etag("items/db01.json", ProtectedItem)
    audit_before = vault.keys("audit/")
    mutated = []

    with pytest.raises(StateTransitionError) as caught:
        vault.transition("db01", ItemState.FAILED_OVER, mutate=mutated.append)
    assert str(caught.value).startswith("cannot move db01 from failed-over to failed-over")
    assert "committed (commit)" in str(caught.value)

    assert mutated == []  # refused before mutate ran
    assert vault.get_with_etag("items/db01.json", ProtectedItem)[1] == etag
    assert vault.keys("audit/") == audit_before


def test_two_racing_failovers_one_wins(azurite: AzuriteInfo, vault: Vault):
    vault.save_item(_item("db01", ItemState.PROTECTED))
    start = threading.Barrier(2)
    outcome: dict[str, object] = {}

    def failover(who: str) -> None:
        mine = Vault(azurite.client().get_container_client(vault.name), actor=who)
        start.wait()
        try:
            outcome[who] = mine.transition("db01", ItemState.FAILED_OVER, mutate=lambda i: setattr(i, "failover_run_id", who))
        except StateTransitionError as exc:
            outcome[who] = exc

    threads = [threading.Thread(target=failover, args=(w,)) for w in ("ps1", "ps2")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    refused = [w for w, r in outcome.items() if isinstance(r, StateTransitionError)]
    won = [w for w, r in outcome.items() if isinstance(r, ProtectedItem)]
    assert len(won) == 1 and len(refused) == 1
    assert "from failed-over to failed-over" in str(outcome[refused[0]])
    assert vault.item("db01").failover_run_id == won[0]
    assert [(e.actor, e.action) for e in vault.audit_log("db01")] == [(won[0], "failover")]


def test_transition_of_unknown_item(vault: Vault):
    vault.save_item(_item("app01"))
    with pytest.raises(NotFoundError, match=r"no protected item 'db01' \(known: app01\)"):
        vault.transition("db01", ItemState.INITIAL_REPLICATION)


def test_audit_is_append_only_and_ordered(vault: Vault):
    for i in range(3):
        vault.audit(AuditEntry(actor="t", item="db01" if i != 1 else "app01", action=f"a{i}"))
    assert [e.action for e in vault.audit_log()] == ["a0", "a1", "a2"]
    assert [e.action for e in vault.audit_log("db01")] == ["a0", "a2"]
    key = vault.keys("audit/")[0]
    assert key.startswith(f"audit/{utcnow():%Y-%m-%d}/")
    with pytest.raises(ConflictError):
        vault.put(key, AuditEntry(actor="t", action="rewrite"), create_only=True)


def test_keys_follow_the_layout_in_models():
    assert item_key("db01") == "items/db01.json"
    assert point_key("db01", "p1") == "points/db01/p1.json"
    assert manifest_key("db01", "p1", "disk0") == "manifests/db01/p1/disk0.bin"
    assert submap_key("db01", "p1", "disk0") == "manifests/db01/p1/disk0.sub"
    assert group_key("app") == "groups/app.json"
    assert inventory_key("latest") == "inventory/latest.json"
    assert inventory_key("previous") == "inventory/previous.json"
    assert drill_key("drill-1") == "drills/drill-1.json"
    assert failover_key("run-1") == "failovers/run-1.json"
    assert lock_key("failover-db01") == "locks/failover-db01"
    with pytest.raises(ValueError):
        item_key("../db01")


def test_audit_keys_are_utc_and_sort_by_time():
    cest = dt.timezone(dt.timedelta(hours=2))
    aware = dt.datetime(2026, 1, 2, 1, 30, 0, 5, tzinfo=cest)  # 2026-01-01 23:30 UTC
    assert audit_key(aware, "u") == "audit/2026-01-01/233000.000005Z-u.json"
    assert audit_key(dt.datetime(2026, 1, 2, 1, 30), "u") == "audit/2026-01-02/013000.000000Z-u.json"  # naive = UTC
    assert audit_key(aware, "z") < audit_key(aware + dt.timedelta(microseconds=1), "a")


# -- leases -----------------------------------------------------------------------------------


def test_held_lease_blocks_a_second_holder(vault: Vault):
    with vault.lease("failover-db01", holder="alice@ps1") as lease:
        assert lease.lease_id and lease.holder == "alice@ps1"
        with pytest.raises(LeaseHeldError) as caught:
            with vault.lease("failover-db01", holder="bob@ps2"):
                pytest.fail("a second holder got the lock")
        msg = str(caught.value)
        assert "lock 'failover-db01'" in msg and "held by alice@ps1 since " in msg
        assert lease.since.isoformat() in msg
        with vault.lease("failover-app01", holder="bob@ps2"):  # other locks are independent
            pass
    with vault.lease("failover-db01", holder="bob@ps2"):  # released at the end
        pass


def test_lease_is_released_on_error(vault: Vault):
    with pytest.raises(RuntimeError, match="boom"):
        with vault.lease("commit-db01", holder="alice"):
            raise RuntimeError("boom")
    with vault.lease("commit-db01", holder="bob") as lease:
        assert lease.holder == "bob"


def _until(condition, timeout: float) -> bool:
    """Poll `condition` until it holds or `timeout` passes (a loaded machine is slow, not wrong)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_lease_renewals_are_counted(vault: Vault):
    with vault.lease("reprotect-db01", holder="alice", renew_every=0.2) as lease:
        assert _until(lambda: lease.renewals >= 4, timeout=20), f"{lease.renewals} renewals in 20 s"
        lease.check()
    assert lease.lost is None


def test_a_lost_lease_is_reported(vault: Vault):
    from azure.storage.blob import BlobLeaseClient

    with vault.lease("failover-db01", holder="alice", renew_every=0.2) as lease:
        # Someone breaks the lease (an operator's `az storage blob lease break`).
        BlobLeaseClient(vault.container.get_blob_client(lease.key)).break_lease(lease_break_period=0)
        assert _until(lambda: lease.lost is not None, timeout=20)
        with pytest.raises(VaultError, match="lock 'failover-db01' was lost while alice held it"):
            lease.check()
    with vault.lease("failover-db01", holder="bob"):  # the broken lock can be taken again
        pass


def test_lease_outlives_its_duration_while_the_body_runs(vault: Vault):
    """15 s is Azure's shortest lease; the body runs past 16 s, so only renewal keeps it held.
    The clock is the truth here (a renewal every 5 s), the count only a lower bound."""
    t0 = time.monotonic()
    with vault.lease("failback-db01", holder="alice", duration_s=15) as lease:
        time.sleep(16)
        assert _until(lambda: lease.renewals >= 3, timeout=20), f"{lease.renewals} renewals"
        assert time.monotonic() - t0 > 15  # past the lease's own duration
        with pytest.raises(LeaseHeldError, match="held by alice"):
            with vault.lease("failback-db01", holder="bob"):
                pass
    assert lease.lost is None


def test_lease_duration_is_checked(vault: Vault):
    with pytest.raises(ValueError, match="15-60"):
        with vault.lease("x", holder="a", duration_s=5):
            pass


# -- the blob client factory and error table --------------------------------------------------


def _site_config(azurite: AzuriteInfo, tmp_path, vault: str) -> SiteConfig:
    key_file = tmp_path / "storage.key"
    key_file.write_text(azurite.key)
    key_file.chmod(0o600)
    return SiteConfig(
        site="lab",
        azure=AzureConfig(
            subscription_id="00000000-0000-0000-0000-000000000000",
            resource_group="rg",
            location="westeurope",
            storage_account=azurite.account,
            blob_endpoint=azurite.blob_endpoint,
            storage_key=f"file:{key_file}",
            ca_bundle=azurite.ca_bundle,
            containers=ContainerNames(vault=vault),
            encryption_key="env:DRBOOK_TEST_UNUSED",
        ),
    )


def test_vault_from_site_config(azurite: AzuriteInfo, tmp_path):
    site = _site_config(azurite, tmp_path, f"site-vault-{uuid.uuid4().hex[:8]}")
    assert blob_service(site).account_name == azurite.account
    v = Vault.from_site(site, actor="site")
    v.ensure()
    v.save_item(_item("db01"))
    assert v.item("db01").name == "db01"


def test_untrusted_certificate_is_not_retryable(azurite: AzuriteInfo, tmp_path):
    other_ca = ensure_certs(tmp_path / "other").ca_cert
    client = blob_service_from(azurite.blob_endpoint, azurite.account, azurite.key, other_ca, retry_total=0)
    with pytest.raises(BlobStoreError, match="TLS certificate is not trusted") as caught:
        Vault(client.get_container_client("vlt")).ensure()
    assert not caught.value.retryable


def test_wrong_key_is_not_retryable(azurite: AzuriteInfo):
    client = blob_service_from(azurite.blob_endpoint, azurite.account, "d3Jvbmcga2V5" * 7, azurite.ca_bundle, retry_total=0)
    with pytest.raises(BlobStoreError, match="check the storage key") as caught:
        Vault(client.get_container_client("vlt")).ensure()
    assert not caught.value.retryable and "d3Jvbmcga2V5" not in str(caught.value)


def test_unreachable_endpoint_is_retryable(azurite: AzuriteInfo):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = blob_service_from(f"https://127.0.0.1:{port}/{azurite.account}", azurite.account, azurite.key, azurite.ca_bundle, retry_total=0)
    with pytest.raises(BlobStoreError, match="blob service unreachable") as caught:
        Vault(client.get_container_client("vlt")).ensure()
    assert caught.value.retryable


def test_plain_http_endpoint_is_refused():
    with pytest.raises(BlobStoreError, match="not https"):
        blob_service_from("http://127.0.0.1:10000/devstoreaccount1", "devstoreaccount1", "a2V5")


def test_messages_never_carry_signatures():
    from azure.core.exceptions import ServiceRequestError

    leak = "GET https://acct.blob.core.windows.net/c/b?sv=2024-01-01&se=x&sp=r&sig=abc%2Bdef123 AccountKey=s3cr3t=="
    assert "abc%2Bdef123" not in redact(leak) and "s3cr3t" not in redact(leak)
    with pytest.raises(BlobStoreError) as caught:
        with map_blob_errors("read c/b"):
            raise ServiceRequestError(leak)
    assert "abc%2Bdef123" not in str(caught.value) and "s3cr3t" not in str(caught.value)
    assert "sig=REDACTED" in str(caught.value) and caught.value.__cause__ is None


def test_a_mistyped_vault_container_is_refused_by_name_and_never_created(azurite: AzuriteInfo, azurite_blob, tmp_path):
    """Reading (items, status, a failover) must not make an empty vault under a wrong name;
    only the stages that start a site's life create it (Site.create_vault)."""
    from drbook.site import Site

    name = f"vault-typo-{uuid.uuid4().hex[:8]}"
    site = Site(cfg=_site_config(azurite, tmp_path, name), path=tmp_path / "site.yaml")
    for read in (site.vault.items, lambda: site.vault.item("db01"), lambda: site.vault.keys("points/")):
        with pytest.raises(NotFoundError, match=rf"vault container '{name}' does not exist: prepare-azure"):
            read()
    with pytest.raises(NotFoundError, match="does not exist"):
        with site.vault.lease("item-db01", holder="t"):
            pass
    assert name not in {c.name for c in azurite_blob.list_containers()}
    site.create_vault().save_item(_item("db01"))
    assert [i.name for i in site.vault.items()] == ["db01"]



def test_leases_are_taken_together_and_a_held_one_gives_the_others_back(vault):
    with vault.lease("m3", holder="someone else"):
        with pytest.raises(LeaseHeldError, match="held by someone else"):
            with vault.leases(["m1", "m2", "m3", "m4"], holder="a plan"):
                raise AssertionError("not reached")
    # Every lock the refused call took was given back: all four can be taken now, then again.
    with vault.leases(["m1", "m2", "m3", "m4", "m1"], holder="a plan") as held:
        assert sorted(lease.name for lease in held) == ["m1", "m2", "m3", "m4"]
        with pytest.raises(LeaseHeldError, match="held by a plan"):
            with vault.lease("m2", holder="another"):
                pass
    with vault.leases(["m1", "m2", "m3", "m4"], holder="again"):
        pass
