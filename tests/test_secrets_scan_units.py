"""The secrets scanner of tests/test_e2e_secrets.py (tests/secrets_scan.py), without the lab:
secrets planted in files, a SQLite database, Prefect result files and (fake) blobs, in every
encoding, are each found; a clean tree gives no hit; no hit message holds a secret."""

from __future__ import annotations

import base64
import json
import os
import secrets as pysecrets
import shutil
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import quote, quote_plus

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from tests import secrets_scan as ss

# Every form a text secret can take: quote, backslash, slash, space, plus and non-ASCII.
VCENTER_PASSWORD = 'vc "pass\\word"/with+spaces é ' + pysecrets.token_hex(4)


def _azurite_like_key() -> str:
    """A random 64-byte account key whose base64 has '+' and '/' (they change its encodings)."""
    while True:
        key = base64.b64encode(os.urandom(64)).decode()
        if "+" in key and "/" in key:
            return key


def _encryption_key() -> str:
    """32 random bytes whose base64 has '+' and '/' (its url-safe base64 then differs), in hex."""
    while True:
        key = os.urandom(32)
        if b"+" in base64.b64encode(key) and b"/" in base64.b64encode(key):
            return key.hex()


def _new_ed25519(path: Path) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                       serialization.NoEncryption()))
    path.chmod(0o600)
    path.with_name(path.name + ".pub").write_bytes(key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH) + b" test\n")


@dataclass(repr=False)
class FakeLab:
    dir: Path
    status: dict
    cfg: object
    secrets: ss.SecretValues

    def __repr__(self) -> str:  # a failing test prints its fixtures: no secret in it
        return f"<FakeLab {self.dir}>"

    def secret(self, name: str) -> str:
        return (self.dir / "secrets" / name).read_text().strip()

    @property
    def key(self) -> bytes:
        return bytes.fromhex(self.secret("encryption-key"))


@pytest.fixture
def area(tmp_path):
    """tmp_path, marked as planted secrets (the lab's scan skips it) and emptied after the test."""
    (tmp_path / ss.PLANTED_MARKER).touch()
    yield tmp_path
    for child in tmp_path.iterdir():
        if child.is_dir():
            shutil.rmtree(child, ignore_errors=True)
        elif child.name != ss.PLANTED_MARKER:
            child.unlink()


@pytest.fixture
def fake_lab(area) -> FakeLab:
    """A lab directory laid out as lab/control.py lays it out, with secrets of its own."""
    from drbook.config import SiteConfig
    from lab.ca import ensure_certs

    d = area / "lab"
    sec = d / "secrets"
    sec.mkdir(parents=True)
    for name, value in (("vcenter-password", VCENTER_PASSWORD), ("winrm-password", pysecrets.token_urlsafe(18)),
                        ("arm-token", pysecrets.token_urlsafe(24)), ("encryption-key", _encryption_key()),
                        ("azurite-key", _azurite_like_key())):
        (sec / name).write_text(value)
        (sec / name).chmod(0o600)
    _new_ed25519(d / "ssh" / "id_ed25519")
    _new_ed25519(d / "machines" / "m1" / "ssh_host_ed25519_key")
    ensure_certs(d / "ca")
    cfg = SiteConfig.model_validate({
        "site": "units",
        "vcenter": {"url": "https://127.0.0.1:1/sdk", "user": "administrator@vsphere.local",
                    "password": f"file:{sec / 'vcenter-password'}"},
        "azure": {"subscription_id": "s", "resource_group": "rg", "location": "westeurope", "storage_account": "a",
                  "blob_endpoint": "https://127.0.0.1:2/a", "storage_key": f"file:{sec / 'azurite-key'}",
                  "credential": {"kind": "static-token", "token": f"file:{sec / 'arm-token'}"},
                  "encryption_key": f"file:{sec / 'encryption-key'}"},
        "machines": [{"name": "m1", "address": "127.0.0.1", "key_file": str(d / "ssh" / "id_ed25519"),
                      "known_hosts": str(d / "ssh" / "known_hosts")}],
    })
    status = {
        "lab_dir": str(d),
        "vcenter": {"password": VCENTER_PASSWORD},
        "azurite": {"key": (sec / "azurite-key").read_text()},
        "arm": {"token_ref": f"file:{sec / 'arm-token'}"},
        "winrm": {"password_ref": f"file:{sec / 'winrm-password'}"},
    }
    return FakeLab(d, status, cfg, ss.secret_values(status, cfg))


def _sas_url(sig_value: str | None = None) -> str:
    sig = sig_value or quote(base64.b64encode(os.urandom(32)).decode(), safe="")
    return f"https://127.0.0.1:10000/devstoreaccount1/arm-disks/d.vhd?snapshot=x&sv=2024-08-04&se=2030&sr=b&sp=r&sig={sig}"


def _plants(lab: FakeLab) -> list[tuple[str, str, bytes]]:
    """(what, part of the secret's name the hit must have, content holding it)."""
    key, az, token = lab.key, lab.secret("azurite-key"), lab.secret("arm-token")
    pem = (lab.dir / "ssh" / "id_ed25519").read_text()
    tls = (lab.dir / "ca" / "server.key").read_text()
    return [
        ("text", "vcenter-password (text)", f"logged in with {VCENTER_PASSWORD} today".encode()),
        ("url-encoded", "vcenter-password (url-encoded)", f"GET /?pw={quote(VCENTER_PASSWORD, safe='')}".encode()),
        ("form-encoded", "vcenter-password (form-encoded)", f"pw={quote_plus(VCENTER_PASSWORD, safe='')}&x=1".encode()),
        ("json-escaped", "vcenter-password (json-escaped)", json.dumps({"password": VCENTER_PASSWORD}).encode()),
        ("json-escaped utf-8", "vcenter-password (json-escaped, utf-8)",
         json.dumps({"password": VCENTER_PASSWORD}, ensure_ascii=False).encode()),
        ("inside base64 (Basic auth)", "winrm-password (inside base64",
         b"Authorization: Basic " + base64.b64encode(b"drbook:" + lab.secret("winrm-password").encode())),
        ("bearer token", "arm-token (text)", f"Authorization: Bearer {token}".encode()),
        ("hex", "encryption-key (text)", f"key={key.hex()}".encode()),
        ("hex upper-case", "encryption key (hex upper-case)", key.hex().upper().encode()),
        ("base64", "encryption key (base64)", b"k: " + base64.b64encode(key)),
        ("url-safe base64", "encryption key (url-safe base64)", base64.urlsafe_b64encode(key)),
        ("raw bytes", "encryption key (raw bytes)", b"\x00\x01binary" + key + b"\xff"),
        ("account key url-encoded", "azurite-key (url-encoded)", f"https://x/?k={quote(az, safe='')}".encode()),
        ("account key json-escaped slashes", "azurite-key (json-escaped slashes)",
         json.dumps({"k": az}).replace("/", "\\/").encode()),
        ("account key bytes", "storage account key (base64-decoded bytes)", b"\x00" + base64.b64decode(az)),
        ("ssh private key copy", "private key ssh/id_ed25519", pem.encode()),
        ("tls private key in json", "private key ca/server.key", json.dumps({"key": tls}).encode()),
        ("sas signature", ss.SAS_SIGNATURE, f"reading {_sas_url()} failed".encode()),
        ("sas url-encoded in a url", ss.SAS_SIGNATURE, f"https://x/?next={quote(_sas_url(), safe='')}".encode()),
        ("account key in a connection string", ss.ACCOUNT_KEY,
         f"DefaultEndpointsProtocol=https;AccountName=a;AccountKey={_azurite_like_key()};".encode()),
    ]


def _plant_tree(root: Path, lab: FakeLab) -> dict[str, tuple[str, Path]]:
    root.mkdir(parents=True, exist_ok=True)
    out = {}
    for i, (what, expect, content) in enumerate(_plants(lab)):
        path = root / f"plant-{i:02d}.txt"
        path.write_bytes(content)
        path.chmod(0o644)
        out[what] = (expect, path)
    return out


def _no_value_in(text: str, secrets: dict[str, bytes]) -> None:
    raw = text.encode()
    leaked = [name for name, value in secrets.items() if value in raw]
    assert not leaked, f"a message holds the value of: {leaked}"


# -- the secrets ------------------------------------------------------------------------------

def test_every_secret_of_the_lab_is_listed_in_its_forms(fake_lab):
    names = set(fake_lab.secrets)
    for expected in ("lab secret file vcenter-password (text)", "lab secret file vcenter-password (url-encoded)",
                     "lab secret file vcenter-password (json-escaped)", "lab secret file winrm-password (text)",
                     "lab secret file arm-token (text)", "lab secret file encryption-key (text)",
                     "encryption key (hex upper-case)", "encryption key (base64)", "encryption key (url-safe base64)",
                     "encryption key (raw bytes)", "lab secret file azurite-key (text)",
                     "storage account key (base64-decoded bytes)",
                     "private key ssh/id_ed25519 (pem body)", "private key ssh/id_ed25519 (raw private scalar)",
                     "private key machines/m1/ssh_host_ed25519_key (pem body)",
                     "private key ca/ca.key (raw private scalar)", "private key ca/server.key (pem body)"):
        assert expected in names, f"{expected} missing"
    assert any(n.startswith("private key ssh/id_ed25519 (pem line") for n in names)
    assert all(len(v) >= ss.MIN_LEN for v in fake_lab.secrets.values())
    assert not fake_lab.secrets.unresolved
    # the same value under two names (a site reference and its lab file) is searched once
    assert len(set(fake_lab.secrets.values())) == len(fake_lab.secrets)
    _no_value_in(repr(fake_lab.secrets) + str(fake_lab.secrets), fake_lab.secrets)


def test_short_values_are_ignored_and_said_so():
    values = ss.SecretValues()
    values.add_text("pin", "1234567")
    assert "pin (text)" not in values and any(i.startswith("pin (text): shorter than 8") for i in values.ignored)


def test_public_material_is_no_secret(fake_lab, area):
    """Headers and public key bytes are the same in every key of a type, or public: the PEM
    lines searched for are those holding bytes of the private scalar only."""
    scanner = ss.Scanner(fake_lab.secrets)
    for public in (fake_lab.dir / "ssh" / "id_ed25519.pub", fake_lab.dir / "ca" / "ca.pem",
                   fake_lab.dir / "ca" / "server.pem"):
        assert scanner.scan_bytes(str(public), public.read_bytes()) == []
    other = area / "other" / "id_ed25519"  # another key of the same type: no hit from the lab's keys
    _new_ed25519(other)
    assert scanner.scan_bytes(str(other), other.read_bytes()) == []


def test_the_base64_alignments_find_a_secret_at_any_offset():
    secret = os.urandom(20)
    needles = ss.base64_alignments(secret)
    for pad in range(6):
        stream = base64.b64encode(os.urandom(pad) + secret + os.urandom(5))
        assert any(n in stream for n in needles), pad


# -- files ------------------------------------------------------------------------------------

def test_each_planted_encoding_in_a_file_is_found(fake_lab, area):
    plants = _plant_tree(area / "tree", fake_lab)
    scanner = ss.scan(fake_lab.secrets, trees=[("files", area / "tree")], skip_planted=False)
    by_file: dict[str, list[str]] = {}
    for hit in scanner.hits:
        by_file.setdefault(hit.where, []).append(hit.secret)
    for what, (expect, path) in plants.items():
        assert any(expect in s for s in by_file.get(str(path), [])), f"{what}: no hit of {expect} in {by_file.get(str(path))}"
    assert scanner.coverage.counts["files"] == len(plants)
    for hit in scanner.hits:
        _no_value_in(str(hit) + repr(hit), fake_lab.secrets)
    _no_value_in(scanner.coverage.summary() + repr(scanner), fake_lab.secrets)


def test_a_clean_tree_gives_no_hit(fake_lab, area):
    tree = area / "clean"
    (tree / "reports").mkdir(parents=True)
    (tree / "reports" / "drill-x.html").write_text("<html>all disks verified</html>")
    (tree / "run").mkdir()
    (tree / "run" / "worker.log").write_text("\n".join(f"line {i} {pysecrets.token_hex(16)}" for i in range(500)))
    (tree / "site.yaml").write_text(f"azure:\n  storage_key: file:{fake_lab.dir / 'secrets' / 'azurite-key'}\n")
    (tree / "redacted.log").write_text(f"GET {_sas_url('REDACTED')} AccountKey=REDACTED;")
    (tree / "doc.json").write_text(json.dumps({"sig": "short", "signature": pysecrets.token_hex(32)}))
    (tree / "id_ed25519.pub").write_bytes((fake_lab.dir / "ssh" / "id_ed25519.pub").read_bytes())
    (tree / "random.bin").write_bytes(os.urandom(1 << 20))
    # a `file:` secret of a site of its own: private, and nothing but the secret
    (tree / "storage.key").write_text(fake_lab.secret("azurite-key") + "\n")
    (tree / "storage.key").chmod(0o600)
    os.mkfifo(tree / "fifo")  # a test's leftover FIFO: reading it would block the scan forever
    scanner = ss.scan(fake_lab.secrets, trees=[("files", tree)], skip_planted=False)
    assert scanner.hits == []
    assert (str(tree / "fifo"), "not a regular file") in scanner.coverage.skipped
    assert scanner.coverage.counts["files"] == 7
    assert scanner.coverage.counts[ss.REPORTS] == 1 and scanner.coverage.counts[ss.LOGS] == 2
    assert scanner.coverage.excluded[(str(tree / "storage.key"), ss.PRIVATE_SECRET_FILE)] == 1


def test_a_secret_file_others_can_read_is_a_hit(fake_lab, area):
    tree = area / "open"
    tree.mkdir()
    (tree / "storage.key").write_text(fake_lab.secret("azurite-key"))
    (tree / "storage.key").chmod(0o644)
    scanner = ss.scan(fake_lab.secrets, trees=[("files", tree)], skip_planted=False)
    assert [h.secret for h in scanner.hits] == ["lab secret file azurite-key (text)"]


def test_exclusions_planted_directories_and_sas_exemptions(fake_lab, area):
    root = area / "root"
    _plant_tree(root / "excluded", fake_lab)
    _plant_tree(root / "planted", fake_lab)
    (root / "planted" / ss.PLANTED_MARKER).touch()
    (root / "run").mkdir()
    (root / "run" / "azurite.log").write_text(f'"GET {_sas_url()} HTTP/1.1" 200\n{fake_lab.secret("arm-token")}\n')
    scanner = ss.scan(fake_lab.secrets, trees=[("files", root)],
                      exclusions=[ss.Exclusion(f"{root.resolve()}/excluded", "holds secrets by design")],
                      sas_exempt=[ss.Exclusion(f"{root.resolve()}/run/azurite.log", "the storage service's own log")])
    assert [str(h) for h in scanner.hits] == [f"{(root / 'run' / 'azurite.log').resolve()}: lab secret file arm-token (text)"]
    reasons = {reason for _, reason in scanner.coverage.excluded}
    assert "holds secrets by design" in reasons and "secrets planted by the scanner's own unit tests" in reasons
    assert "the storage service's own log" in scanner.coverage.summary()


def test_pytest_tmp_roots_are_the_retained_sessions(tmp_path):
    base = tmp_path / "pytest-of-someone"
    for n in (9, 10, 11):
        (base / f"pytest-{n}" / "popen-gw0").mkdir(parents=True)
    (base / "pytest-current").symlink_to(base / "pytest-11")
    assert ss.pytest_tmp_roots(base / "pytest-11") == [base / f"pytest-{n}" for n in (9, 10, 11)]
    assert ss.pytest_tmp_roots(base / "pytest-10" / "popen-gw0")[-1] == base / "pytest-11"
    assert ss.pytest_tmp_roots(Path("/nonexistent/basetemp")) == [Path("/nonexistent/basetemp")]  # --basetemp
    excluded = ss.pytest_exclusions([base / "pytest-9"])
    assert any(e.matches(base / "pytest-9" / "popen-gw1" / "azurite0") for e in excluded)
    assert not any(e.matches(base / "pytest-9" / "popen-gw1" / "site0") for e in excluded)


# -- SQLite and Prefect results ------------------------------------------------------------------

def test_each_planted_encoding_in_sqlite_is_found_by_table_column_and_row(fake_lab, area):
    db = area / "db" / "prefect.db"
    db.parent.mkdir()
    con = sqlite3.connect(db)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("CREATE TABLE log (id TEXT PRIMARY KEY, message TEXT, data BLOB)")
    con.execute("CREATE TABLE kv (k TEXT, v TEXT)")  # no id column: rows are named by rowid
    plants = _plants(fake_lab)
    for i, (_, _, content) in enumerate(plants):
        if _utf8(content):  # text as text, binary as a blob
            con.execute("INSERT INTO log VALUES (?, ?, NULL)", (f"row-{i}", content.decode()))
        else:
            con.execute("INSERT INTO log VALUES (?, 'clean', ?)", (f"row-{i}", content))
    con.execute("INSERT INTO log VALUES ('clean', 'nothing here', x'00ff')")
    con.execute("INSERT INTO kv VALUES ('a', ?)", (f"token {fake_lab.secret('arm-token')}",))
    con.commit()
    scanner = ss.Scanner(fake_lab.secrets)
    ss.scan_sqlite(scanner, db)
    con.close()
    wheres = {(h.where, h.secret) for h in scanner.hits}
    for i, (what, expect, content) in enumerate(plants):
        column = "message" if _utf8(content) else "data"
        assert any(w == f"prefect.db: log.{column} id=row-{i}" and expect in s for w, s in wheres), what
    assert ("prefect.db: kv.v id=1", "lab secret file arm-token (text)") in wheres
    assert not any("id=clean" in w for w, _ in wheres)
    assert scanner.coverage.counts[ss.PREFECT_ROWS] == len(plants) + 2
    assert scanner.coverage.counts[ss.PREFECT_DB_FILES] >= 2  # the database and its -wal (and -shm)
    assert any(w.endswith("[raw]") for w, _ in wheres), "the raw files are searched too"
    for hit in scanner.hits:
        _no_value_in(str(hit), fake_lab.secrets)


def _utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def test_prefect_results_are_decoded_and_searched(fake_lab, area):
    from prefect.serializers import CompressedSerializer, JSONSerializer, PickleSerializer

    results = area / "storage"
    results.mkdir()
    value = {"report": f"password {VCENTER_PASSWORD}", "key": fake_lab.key}
    pickle = PickleSerializer(picklelib="cloudpickle")
    compressed = CompressedSerializer(serializer=pickle, compressionlib="lzma")
    json_ser = JSONSerializer()
    (results / "bare").write_bytes(pickle.dumps(value))  # base64 with line breaks: found only decoded
    for name, ser, obj in (("record-pickle", pickle, value), ("record-compressed", compressed, value),
                           ("record-json", json_ser, {"report": f"password {VCENTER_PASSWORD}"})):
        (results / name).write_text(json.dumps({"metadata": {"storage_key": str(results / name),
                                                             "serializer": ser.model_dump(mode="json")},
                                                "result": ser.dumps(obj).decode()}))
    (results / "clean").write_bytes(pickle.dumps({"rows": [1, 2, 3]}))
    scanner = ss.scan(fake_lab.secrets, result_dirs=[results], skip_planted=False)
    found = {(Path(h.where.split(" [")[0]).name, h.secret) for h in scanner.hits}
    for name in ("bare", "record-pickle", "record-compressed"):
        assert (name, "lab secret file vcenter-password (text)") in found, name
        assert (name, "encryption key (raw bytes)") in found, name
    assert any(name == "record-json" and "vcenter-password (json-escaped" in s for name, s in found)
    assert not any(name == "clean" for name, _ in found)
    assert scanner.coverage.counts[ss.PREFECT_RESULTS] == 5
    assert any("[decoded result]" in h.where for h in scanner.hits)


def test_result_payloads_say_what_they_cannot_open():
    record = json.dumps({"metadata": {"serializer": {"type": "compressed/pickle", "compressionlib": "snappy"}},
                         "result": base64.b64encode(b"x" * 40).decode()}).encode()
    payloads, problem = ss.result_payloads(record)
    assert payloads == [] and "snappy" in problem


# -- blobs --------------------------------------------------------------------------------------

class _Container:
    def __init__(self, name: str, blobs: list[SimpleNamespace], metadata: dict | None = None) -> None:
        self.name, self.metadata, self.blobs = name, metadata or {}, {b.name + (b.snapshot or ""): b for b in blobs}

    def list_blobs(self, include=None):
        return list(self.blobs.values())

    def list_blob_names(self, name_starts_with: str = ""):
        return [b.name for b in self.blobs.values() if b.name.startswith(name_starts_with) and not b.snapshot]

    def get_blob_client(self, name: str):
        data = self.blobs[name].data
        return SimpleNamespace(download_blob=lambda: SimpleNamespace(readall=lambda: data))


class _Service:
    def __init__(self, *containers: _Container) -> None:
        self.containers = {c.name: c for c in containers}

    def list_containers(self, include_metadata: bool = False):
        return [SimpleNamespace(name=c.name, metadata=c.metadata) for c in self.containers.values()]

    def get_container_client(self, name: str) -> _Container:
        return self.containers[name]


def _blob(name: str, data: bytes, *, kind: str = "BlockBlob", metadata: dict | None = None, snapshot: str | None = None):
    return SimpleNamespace(name=name, data=data, blob_type=kind, size=len(data), metadata=metadata or {},
                           snapshot=snapshot)


def test_blobs_documents_are_searched_disk_bytes_and_ciphertext_skipped(fake_lab):
    token = fake_lab.secret("arm-token")
    service = _Service(
        _Container("t1-vault", [
            _blob("items/db01.json", json.dumps({"state": "protected"}).encode()),
            _blob("failovers/r1.json", json.dumps({"status": "succeeded", "error": f"Bearer {token}"}).encode()),
            _blob("drills/d1.json", json.dumps({"status": "cleaned-up", "report": _sas_url()}).encode()),
            _blob("manifests/db01/p1/disk0.bin", os.urandom(64) + fake_lab.key),
        ]),
        _Container("t1-cache", [
            _blob("db01/c1/seg-000001", fake_lab.key),  # ciphertext: skipped
            _blob("db01/c1/COMMITTED", b"{}", metadata={"note": token}),
        ]),
        _Container("t1-replicas", [
            _blob("replicas/db01/disk0.vhd", fake_lab.key, kind="PageBlob"),
            _blob("replicas/db01/disk0.vhd", b"", kind="PageBlob", snapshot="2026-01-01", metadata={"point": "p1"}),
        ], metadata={"owner": "drbook"}),
        _Container(ss.ARM_DISKS_CONTAINER, [_blob("disks/x.vhd", fake_lab.key, kind="PageBlob")]),
    )
    scanner = ss.Scanner(fake_lab.secrets)
    ss.scan_blobs(scanner, service, workers=2)
    got = {(h.where, h.secret) for h in scanner.hits}
    assert got == {
        ("t1-vault/failovers/r1.json", "lab secret file arm-token (text)"),
        ("t1-vault/drills/d1.json", ss.SAS_SIGNATURE),
        ("t1-vault/manifests/db01/p1/disk0.bin", "encryption key (raw bytes)"),
        ("t1-cache/db01/c1/COMMITTED [name, metadata]", "lab secret file arm-token (text)"),
    }
    counts = scanner.coverage.counts
    assert counts[ss.BLOBS] == 5 and counts[ss.VAULT_DOCS] == 4 and counts[ss.BLOB_METADATA] == 9
    skipped = dict(scanner.coverage.skipped)
    assert "cache segment" in skipped["t1-cache/db01/c1/seg-000001"]
    assert "page blob" in skipped["t1-replicas/replicas/db01/disk0.vhd"]
    assert "ARM emulator" in skipped["arm-disks/disks/x.vhd"]

    seen = ss.lifecycle_seen({"lab_dir": "/nonexistent"}, service=service)
    assert (seen.failover_records, seen.drill_records, seen.complete) == (1, 1, False)  # no Prefect database


# -- the ordering hook ----------------------------------------------------------------------------

def test_the_secrets_scan_module_is_moved_after_every_other_test(monkeypatch):
    from tests.conftest import pytest_collection_modifyitems

    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)  # a single session: no slowest-first order

    def item(name: str):
        return SimpleNamespace(path=Path("tests") / name, fixturenames=(), name=name)

    items = [item("test_a.py"), item("test_e2e_secrets.py"), item("test_b.py"), item("test_lab.py")]
    pytest_collection_modifyitems(None, items)
    assert [i.path.name for i in items] == ["test_a.py", "test_b.py", "test_lab.py", "test_e2e_secrets.py"]
    # in a parallel worker the slowest modules go first, and the scan still last
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw0")
    pytest_collection_modifyitems(None, items)
    assert [i.path.name for i in items] == ["test_lab.py", "test_a.py", "test_b.py", "test_e2e_secrets.py"]
