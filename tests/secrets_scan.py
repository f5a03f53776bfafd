"""A secrets scan of everything the lab and drbook wrote (issue 14).

`secret_values(lab, site_cfg)` lists every secret the lab has, each in the encodings it could
be written in; `scan(...)` searches files, SQLite databases, Prefect's stored results and
blob containers for them and returns `Hit`s, which name where and which secret, never the
value. `scan_lab(...)` is the whole scan of a lab (tests/test_e2e_secrets.py).

What is a secret (secret_values):
  - every `file:` / `env:` / `prefect:` secret reference of the site config, resolved
    (vCenter password, storage account key, ARM token, encryption key, machine passwords,
    the alert webhook token), and every file of the lab's secrets directory;
  - the lab's status: vCenter password, Azurite account key;
  - the private keys: the machines' key_file (the lab's SSH client key), each lab machine's
    sshd host key, the lab CA's and the services' TLS keys: the PEM body joined into one
    line, each base64 line of 40 or more characters that encodes bytes of the private
    scalar (the others are headers and public key bytes, the same in every key of a type
    or public anyway), and the raw private scalar;
  - the encryption key: hex (lower and upper case), base64 and url-safe base64 of its 32
    raw bytes, and the raw bytes;
  - the Azurite account key: its text, and its base64-decoded bytes (the HMAC key the
    signatures are made with); no other form of it is meaningful;
  - each text secret and each raw key also as it reads inside a longer base64 stream (its
    three alignments: e.g. in a base64 pickle or a Basic authorization header);
  - each text form also URL-encoded (upper- and lower-case escapes, and `+` for spaces)
    and JSON-escaped (`\\/` included), where that differs from the text;
  - SAS signatures are made at run time, so they are found by pattern: any `sig=` (or
    URL-encoded `sig%3D`) query value of 16 or more characters is a hit unless it reads
    REDACTED; likewise `AccountKey=` in a connection string.
Values (and derived forms) shorter than MIN_LEN bytes are ignored: too short to tell a
leak from chance. `SecretValues.ignored` names any that were.

Nothing here prints or returns a secret's value: hits, coverage and the reprs of the
secret containers name secrets only.
"""

from __future__ import annotations

import base64
import bisect
import binascii
import bz2
import fnmatch
import gzip
import json
import lzma
import os
import re
import sqlite3
import stat
import zlib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator
from urllib.parse import quote, quote_plus, unquote

MIN_LEN = 8  # bytes: shorter values are ignored (said in SecretValues.ignored)
MAX_FILE = 512 * 1024 * 1024  # a larger file is skipped (and said so)
MAX_BLOB = 64 * 1024 * 1024
PLANTED_MARKER = ".secrets-scan-planted"  # a directory of planted test secrets: not lab output
PEM_LINE_MIN = 40

# Coverage kinds: what tests/test_e2e_secrets.py requires to be non-empty.
LAB_FILES = "lab files"
LOGS = "logs"
REPORTS = "reports"
PYTEST_FILES = "pytest tmp files"
PREFECT_ROWS = "prefect db rows"
PREFECT_DB_FILES = "prefect db files"
PREFECT_RESULTS = "prefect results"
BLOBS = "blobs"
VAULT_DOCS = "vault documents"
BLOB_METADATA = "blob metadata"

VAULT_PREFIXES = ("items/", "points/", "manifests/", "groups/", "inventory/", "drills/", "failovers/", "audit/",
                  "locks/")
_SEGMENT = re.compile(r"/seg-\d+$")
ARM_DISKS_CONTAINER = "arm-disks"  # lab/arm/blobs.py: the ARM emulator's managed-disk bytes


# -- the secrets ---------------------------------------------------------------------------

class SecretValues(dict):
    """name -> bytes. Its repr names no value (a failing test may print it)."""

    def __init__(self) -> None:
        super().__init__()
        self.ignored: list[str] = []  # "name (form): why", for values too short
        self.unresolved: list[str] = []  # secret references that could not be read

    def __repr__(self) -> str:
        return f"<{len(self)} secret values, redacted>"

    __str__ = __repr__

    def add(self, name: str, form: str, data: bytes) -> None:
        label = f"{name} ({form})"
        if len(data) < MIN_LEN:
            self.ignored.append(f"{label}: shorter than {MIN_LEN} bytes")
            return
        if data not in self.values():
            self[label] = data

    def add_text(self, name: str, text: str) -> None:
        """A text secret: the text, its URL-encoded and JSON-escaped forms, and how it reads
        inside a base64 stream."""
        text = text.strip()
        core = text.rstrip("=") or text  # base64 padding: the unpadded text matches both
        self.add(name, "text", core.encode())
        for form, encoded in _text_forms(core).items():
            if encoded != core:
                self.add(name, form, encoded.encode())
        self.add_inside_base64(name, core.encode())

    def add_inside_base64(self, name: str, data: bytes) -> None:
        for k, needle in enumerate(base64_alignments(data)):
            self.add(name, f"inside base64, offset {k}", needle)


def _text_forms(text: str) -> dict[str, str]:
    url = quote(text, safe="")
    return {
        "url-encoded": url,
        "url-encoded, lower-case escapes": re.sub(r"%[0-9A-F]{2}", lambda m: m[0].lower(), url),
        "form-encoded": quote_plus(text, safe=""),
        "json-escaped": json.dumps(text)[1:-1],
        "json-escaped, utf-8": json.dumps(text, ensure_ascii=False)[1:-1],
        "json-escaped slashes": json.dumps(text)[1:-1].replace("/", "\\/"),
    }


def base64_alignments(data: bytes) -> list[bytes]:
    """The base64 characters that encode `data` only, at each of the three offsets it can
    start at in a longer stream (std alphabet, no padding)."""
    out = []
    for k, start in ((0, 0), (1, 2), (2, 3)):
        enc = base64.b64encode(b"\0" * k + data)
        end = ((len(data) + k) // 3) * 4  # the last group may mix in what follows
        out.append(enc[start:end])
    return out


def _private_key_needles(path: Path) -> dict[str, bytes]:
    """form -> bytes of one PEM private key (see the module doc)."""
    text = path.read_text()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("-----")]
    body = "".join(lines)
    out = {"pem body": body.encode()}
    scalar = _private_scalar(path.read_bytes())
    try:
        blob = base64.b64decode(body)
    except binascii.Error:
        blob = b""
    at = blob.find(scalar) if scalar else -1
    chars = 0
    for i, line in enumerate(lines):
        first_byte, last_byte = chars * 3 // 4, (chars + len(line)) * 3 // 4 + 1
        chars += len(line)
        if len(line) < PEM_LINE_MIN:
            continue
        if at < 0 or (first_byte < at + len(scalar) and at < last_byte):
            out[f"pem line {i + 1}"] = line.encode()
    if scalar:
        out["raw private scalar"] = scalar
    for form, data in list(out.items()):
        if form.startswith("pem"):
            url = quote(data.decode(), safe="").encode()
            if url != data:
                out[f"{form}, url-encoded"] = url
            slashed = data.replace(b"/", b"\\/")
            if slashed != data:
                out[f"{form}, json-escaped slashes"] = slashed
    return out


def _private_scalar(pem: bytes) -> bytes | None:
    """The secret number of a PEM private key (Ed25519 seed, EC private value, RSA d)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    key = None
    for load in (lambda: serialization.load_ssh_private_key(pem, password=None),
                 lambda: serialization.load_pem_private_key(pem, password=None)):
        try:
            key = load()
            break
        except (ValueError, TypeError):
            continue
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.private_bytes_raw()
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key.private_numbers().private_value.to_bytes((key.curve.key_size + 7) // 8, "big")
    if isinstance(key, rsa.RSAPrivateKey):
        d = key.private_numbers().d
        return d.to_bytes((d.bit_length() + 7) // 8, "big")
    return None


def private_key_files(lab: dict, site_cfg) -> list[Path]:
    lab_dir = Path(lab["lab_dir"])
    files = [Path(m.key_file) for m in site_cfg.machines if m.key_file]
    files += [lab_dir / "ssh" / "id_ed25519", *sorted((lab_dir / "machines").glob("*/ssh_host_ed25519_key")),
              lab_dir / "ca" / "ca.key", lab_dir / "ca" / "server.key"]
    seen: list[Path] = []
    for f in files:
        if f.is_file() and f.resolve() not in seen:
            seen.append(f.resolve())
    return seen


def _site_secret_refs(site_cfg) -> list[tuple[str, str]]:
    """(dotted field, reference) of every secret reference in the site config."""
    from drbook.config import _leaves
    from drbook.secrets import is_secret_field

    return [(".".join(map(str, loc)), value) for loc, info, value in _leaves(site_cfg)
            if is_secret_field(info) and isinstance(value, str)]


def secret_values(lab: dict, site_cfg) -> SecretValues:
    """Every secret the lab has, by name and form (see the module doc)."""
    from drbook.errors import SecretError
    from drbook.secrets import resolve_secret

    out = SecretValues()
    lab_dir = Path(lab["lab_dir"])
    for f in sorted((lab_dir / "secrets").glob("*")):
        if f.is_file():
            out.add_text(f"lab secret file {f.name}", f.read_text())
    for where, ref in _site_secret_refs(site_cfg):
        try:
            out.add_text(f"site {where}", resolve_secret(ref).get_secret_value())
        except SecretError:
            out.unresolved.append(f"site {where}")
    for name, value in (("vCenter password", lab.get("vcenter", {}).get("password")),
                        ("Azurite account key", lab.get("azurite", {}).get("key"))):
        if value:
            out.add_text(name, value)
    for key, name in ((lab.get("arm", {}).get("token_ref"), "ARM token"),
                      (lab.get("winrm", {}).get("password_ref"), "WinRM password")):
        if key:
            try:
                out.add_text(name, resolve_secret(key).get_secret_value())
            except SecretError:
                out.unresolved.append(name)

    # The encryption key: its bytes and their encodings.
    try:
        from drbook.replication.segments import key_from_hex

        raw = key_from_hex(resolve_secret(site_cfg.azure.encryption_key).get_secret_value())
    except SecretError:
        out.unresolved.append("encryption key")
    else:
        name = "encryption key"
        out.add(name, "hex", raw.hex().encode())
        out.add(name, "hex upper-case", raw.hex().upper().encode())
        std = base64.b64encode(raw).rstrip(b"=")
        out.add(name, "base64", std)
        out.add(name, "url-safe base64", base64.urlsafe_b64encode(raw).rstrip(b"="))
        for form, encoded in _text_forms(std.decode()).items():
            if encoded.encode() != std:
                out.add(name, f"base64, {form}", encoded.encode())
        out.add(name, "raw bytes", raw)
        out.add_inside_base64(name + " raw bytes", raw)

    # The storage account key's decoded bytes (its text is above).
    if site_cfg.azure.storage_key:
        try:
            text = resolve_secret(site_cfg.azure.storage_key).get_secret_value()
            decoded = base64.b64decode(text, validate=True)
        except (SecretError, binascii.Error, ValueError):
            decoded = b""
        if decoded:
            out.add("storage account key", "base64-decoded bytes", decoded)

    for path in private_key_files(lab, site_cfg):
        where = _relative(path, lab_dir)
        for form, data in _private_key_needles(path).items():
            out.add(f"private key {where}", form, data)
    return out


def _relative(path: Path, base: Path) -> str:
    try:
        return str(path.resolve().relative_to(base.resolve()))
    except ValueError:
        return str(path)


# -- hits and coverage ----------------------------------------------------------------------

@dataclass(frozen=True)
class Hit:
    where: str  # file path, "db table.column id=...", "container/blob"
    secret: str  # the secret's name and form, or the pattern's name: never the value
    count: int = 1

    def __str__(self) -> str:
        return f"{self.where}: {self.secret}" + (f" ({self.count} times)" if self.count > 1 else "")


@dataclass(frozen=True)
class Exclusion:
    pattern: str  # fnmatch pattern on the absolute path (`*` also matches `/`)
    reason: str

    def matches(self, path: Path | str) -> bool:
        return fnmatch.fnmatchcase(str(path), self.pattern)


@dataclass
class Coverage:
    counts: Counter = field(default_factory=Counter)
    bytes_scanned: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (where, why)
    excluded: Counter = field(default_factory=Counter)  # (pattern, reason) -> paths excluded
    sas_exempted: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = ["scanned: " + ", ".join(f"{k} {v}" for k, v in sorted(self.counts.items()))
                 + f"; {self.bytes_scanned / 2**20:.1f} MiB"]
        for (pattern, reason), n in sorted(self.excluded.items()):
            lines.append(f"excluded {n}x {pattern}: {reason}")
        why = Counter(reason for _, reason in self.skipped)
        for reason, n in sorted(why.items()):
            lines.append(f"skipped {n}: {reason}")
        for where in self.sas_exempted:
            lines.append(f"not searched for SAS signatures: {where}")
        return "\n".join(lines)


# Credentials made at run time, found by their shape: the literal (matched case-insensitively,
# also URL-encoded), what may come before it, and the least length of its value.
SAS_SIGNATURE = "SAS signature (sig=)"
ACCOUNT_KEY = "account key (AccountKey=)"
_PATTERNS = (
    (SAS_SIGNATURE, (b"sig=", b"sig%3d", b"sig%253d"), 16),
    (ACCOUNT_KEY, (b"accountkey=", b"accountkey%3d"), 20),
)
_VALUE = re.compile(rb"[A-Za-z0-9%+/=_-]+")
_WORD = frozenset(b"abcdefghijklmnopqrstuvwxyz0123456789_")


def _redacted(value: bytes) -> bool:
    text = unquote(value.decode("ascii", "replace")).upper()
    return "REDACTED" in text or set(text) <= set("*X")


def _pattern_matches(buf: bytes) -> Iterator[tuple[str, int, bytes]]:
    """(pattern name, offset, value) of every unredacted SAS signature and account key."""
    low = buf.lower()
    for name, literals, least in _PATTERNS:
        for lit in literals:
            at = low.find(lit)
            while at >= 0:
                # `sig` is a query parameter: after a non-word character or an encoded & or ?
                own = name != SAS_SIGNATURE or at == 0 or low[at - 1] not in _WORD or low[at - 3:at] in (b"%26", b"%3f")
                m = _VALUE.match(buf, at + len(lit)) if own else None
                if m and len(m[0]) >= least and not _redacted(m[0]):
                    yield name, m.start(), m[0]
                at = low.find(lit, at + 1)


class Scanner:
    """Finds every secret and pattern in bytes; collects hits and coverage."""

    def __init__(self, secrets: dict[str, bytes], *, sas_exempt: Iterable[Exclusion] = ()) -> None:
        self._needles = list(secrets.items())
        self._values = frozenset(secrets.values())
        self.sas_exempt = list(sas_exempt)
        self.hits: list[Hit] = []
        self.coverage = Coverage()

    def __repr__(self) -> str:
        return f"<Scanner of {len(self._needles)} secret values, {len(self.hits)} hits>"

    def is_only_a_secret(self, data: bytes) -> bool:
        """Whether data is one secret and nothing else (a secret file's content)."""
        text = data.strip()
        body = b"".join(ln.strip() for ln in text.splitlines() if not ln.startswith(b"-----"))
        return bool(text) and bool({text, text.rstrip(b"="), body} & self._values)

    def scan_bytes(self, where: str, data: bytes, *, patterns: bool = True) -> list[Hit]:
        return self.scan_cells([(where, data)], patterns=patterns)

    def scan_cells(self, cells: list[tuple[str, bytes]], *, patterns: bool = True) -> list[Hit]:
        """Scan many (where, bytes) at once: they are joined, searched, and each match is
        given back to the cell it lies in (a match across two cells is none)."""
        cells = [(w, bytes(d)) for w, d in cells if d]
        if not cells:
            return []
        sep = b"\n\x00\x1e\x00\n"
        starts, pos = [], 0
        for _, d in cells:
            starts.append(pos)
            pos += len(d) + len(sep)
        buf = sep.join(d for _, d in cells)
        self.coverage.bytes_scanned += len(buf)
        found: Counter = Counter()

        def cell_of(at: int, length: int) -> int | None:
            i = bisect.bisect_right(starts, at) - 1
            return i if at + length <= starts[i] + len(cells[i][1]) else None

        for name, needle in self._needles:
            at = buf.find(needle)
            while at >= 0:
                i = cell_of(at, len(needle))
                if i is not None:
                    found[(cells[i][0], name)] += 1
                at = buf.find(needle, at + 1)
        if patterns:
            for name, at, value in _pattern_matches(buf):
                i = cell_of(at, len(value))
                if i is None:
                    continue
                if name == SAS_SIGNATURE and any(e.matches(cells[i][0]) for e in self.sas_exempt):
                    continue
                found[(cells[i][0], name)] += 1
        hits = [Hit(where, name, n) for (where, name), n in found.items()]
        self.hits.extend(hits)
        return hits


# -- files ------------------------------------------------------------------------------------

def walk(root: Path, exclusions: list[Exclusion], coverage: Coverage, *, skip_planted: bool = True) -> Iterator[Path]:
    """Regular files under root (symlinks not followed), minus the excluded."""
    def excluded(p: Path) -> bool:
        for e in exclusions:
            if e.matches(p):
                coverage.excluded[(e.pattern, e.reason)] += 1
                return True
        return False

    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        d = Path(dirpath)
        if skip_planted and PLANTED_MARKER in filenames:
            coverage.excluded[(str(d), "secrets planted by the scanner's own unit tests")] += 1
            dirnames[:] = []
            continue
        dirnames[:] = sorted(n for n in dirnames if not (d / n).is_symlink() and not excluded(d / n))
        for name in sorted(filenames):
            p = d / name
            if not p.is_symlink() and not excluded(p):
                yield p


def _read(path: Path, coverage: Coverage) -> bytes | None:
    try:
        st = path.stat()
        if not stat.S_ISREG(st.st_mode):  # a FIFO a test left would block the read forever
            coverage.skipped.append((str(path), "not a regular file"))
            return None
        size = st.st_size
        if size > MAX_FILE:
            coverage.skipped.append((str(path), f"larger than {MAX_FILE // 2**20} MiB"))
            return None
        return path.read_bytes()
    except FileNotFoundError:
        return None  # removed while the scan ran (a test's tmp dir, a rotated file)
    except OSError as exc:
        coverage.skipped.append((str(path), f"unreadable ({exc.strerror})"))
        return None


PRIVATE_SECRET_FILE = ("a private secret file: mode 0600 and nothing but one secret, as a `file:` secret "
                       "reference requires (drbook.secrets); a test's own site config's secret")


def _private(path: Path) -> bool:
    from drbook.secrets import private_file_problem

    return private_file_problem(path) is None


def scan_files(scanner: Scanner, root: Path, exclusions: list[Exclusion], kind: str, *,
               result_dirs: Iterable[Path] = (), skip_planted: bool = True) -> None:
    """Every file under root, raw (and decoded, when it is a Prefect result). A private
    file holding one secret and nothing else is a secret file, not a leak (PRIVATE_SECRET_FILE):
    excluded, and said so."""
    result_dirs = [Path(r).resolve() for r in result_dirs]
    counts = scanner.coverage.counts
    for path in walk(root, exclusions, scanner.coverage, skip_planted=skip_planted):
        data = _read(path, scanner.coverage)
        if data is None:
            continue
        where = str(path)
        if len(data) < 64 * 1024 and scanner.is_only_a_secret(data) and _private(path):
            scanner.coverage.excluded[(where, PRIVATE_SECRET_FILE)] += 1
            continue
        scanner.scan_bytes(where + " [name]", where.encode())
        scanner.scan_bytes(where, data)
        if any(path.resolve().is_relative_to(r) for r in result_dirs):
            scan_prefect_result(scanner, where, data)
            counts[PREFECT_RESULTS] += 1
            if kind == PREFECT_RESULTS:
                continue
        counts[kind] += 1
        if path.suffix in (".log", ".jsonl"):
            counts[LOGS] += 1
        if path.parent.name == "reports" and path.suffix == ".html":
            counts[REPORTS] += 1


# -- Prefect: stored results and the database --------------------------------------------------

_B64_TEXT = re.compile(rb"^[A-Za-z0-9+/=\s]+$")
_DECOMPRESS: dict[str, Callable[[bytes], bytes]] = {
    "lzma": lzma.decompress, "zlib": zlib.decompress, "bz2": bz2.decompress, "gzip": gzip.decompress,
}


def _b64(data: bytes) -> bytes | None:
    data = data.strip()
    if len(data) < 8 or not _B64_TEXT.match(data):
        return None
    try:
        return base64.b64decode(b"".join(data.split()), validate=True)
    except (binascii.Error, ValueError):
        return None


def result_payloads(data: bytes) -> tuple[list[bytes], str | None]:
    """What a Prefect result file holds, decoded: a JSON result record's `result` (base64 of
    a pickle, base64 of compressed bytes for a `compressed/...` serializer, or a JSON
    serializer's text, unescaped), or a bare base64 pickle. Returns the payloads and, when
    one could not be decoded, why."""
    stripped = data.strip()
    if stripped.startswith(b"{"):
        try:
            doc = json.loads(stripped)
        except ValueError:
            return [], None
        result = doc.get("result") if isinstance(doc, dict) else None
        if not isinstance(result, str):
            return [], None
        serializer = ((doc.get("metadata") or {}).get("serializer") or {})
        kind = str(serializer.get("type", ""))
        decoded = _b64(result.encode())
        if decoded is None:  # a JSON serializer's text: in the file escaped once more, as a JSON string
            return [result.encode("utf-8", "surrogatepass")], None
        if kind.startswith("compressed"):
            lib = str(serializer.get("compressionlib", "lzma")).rsplit(".", 1)[-1]
            if lib not in _DECOMPRESS:
                return [], f"compressed with {lib}, which the scan cannot open"
            try:
                decoded = _DECOMPRESS[lib](decoded)
            except Exception:  # noqa: BLE001 - any decompression failure: say so
                return [], f"{lib} data that does not decompress"
            again = _b64(decoded)  # the inner serializer's base64 (pickle)
            return [decoded, *([again] if again else [])], None
        return [decoded], None
    decoded = _b64(stripped)
    return ([decoded] if decoded else []), None


def scan_prefect_result(scanner: Scanner, where: str, data: bytes) -> None:
    payloads, problem = result_payloads(data)
    if problem:
        scanner.coverage.skipped.append((where, problem))
    for p in payloads:
        scanner.scan_bytes(where + " [decoded result]", p)


def scan_sqlite(scanner: Scanner, path: Path, *, label: str | None = None) -> None:
    """Every text and blob value of every table, located by table, column and row id; then
    the raw bytes of the database and its -wal and -shm files (deleted rows, free pages)."""
    label = label or path.name
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=60)
    try:
        tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            cols = [r[1] for r in con.execute(f'PRAGMA table_info("{table}")')]
            key = "id" if "id" in cols else None
            try:
                rows = con.execute(f'SELECT {"rowid, " if key is None else ""}* FROM "{table}"').fetchall()
                offset = 1 if key is None else 0
            except sqlite3.OperationalError:  # WITHOUT ROWID
                rows, offset = [(None, *r) for r in con.execute(f'SELECT * FROM "{table}"')], 1
            cells = []
            for n, row in enumerate(rows):
                rid = row[offset + cols.index(key)] if key else (row[0] if row[0] is not None else f"#{n}")
                for col, value in zip(cols, row[offset:]):
                    if isinstance(value, str):
                        value = value.encode("utf-8", "surrogatepass")
                    if isinstance(value, (bytes, memoryview)) and value:
                        cells.append((f"{label}: {table}.{col} id={rid}", bytes(value)))
            scanner.scan_cells(cells)
            scanner.coverage.counts[PREFECT_ROWS] += len(rows)
    finally:
        con.close()
    for suffix in ("", "-wal", "-shm"):
        f = Path(f"{path}{suffix}")
        data = _read(f, scanner.coverage) if f.exists() else None
        if data is not None:
            scanner.scan_bytes(f"{f} [raw]", data)
            scanner.coverage.counts[PREFECT_DB_FILES] += 1


def prefect_result_dirs(db: Path | None) -> list[Path]:
    """Where Prefect clients store results: this process's setting, and the directory of
    every result the database records (the worker's runs may store elsewhere)."""
    dirs: list[Path] = []
    try:
        from prefect.settings import get_current_settings

        dirs.append(Path(get_current_settings().results.local_storage_path).expanduser())
    except Exception:  # noqa: BLE001 - no Prefect settings: only what the database says
        pass
    if db is not None and db.exists():
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=60)
        try:
            for table in ("flow_run_state", "task_run_state"):
                try:
                    rows = con.execute(f"SELECT data FROM {table} WHERE data LIKE '%storage_key%'").fetchall()
                except sqlite3.OperationalError:
                    continue
                for (data,) in rows:
                    try:
                        key = json.loads(data).get("storage_key")
                    except (ValueError, AttributeError):
                        continue
                    if isinstance(key, str) and key.startswith("/"):
                        dirs.append(Path(key).parent)
        finally:
            con.close()
    out: list[Path] = []
    for d in dirs:
        d = d.resolve()
        if d.is_dir() and d not in out:
            out.append(d)
    return out


# -- blobs -------------------------------------------------------------------------------------

def _blob_skip(container: str, blob) -> str | None:
    """Why a blob's content is not searched (its name and metadata always are)."""
    if container == ARM_DISKS_CONTAINER:
        return "the ARM emulator's managed-disk bytes (page blobs holding the source machines' disks)"
    if str(getattr(blob, "blob_type", "")).lower().endswith("pageblob"):
        return "a page blob: a disk replica (the source machines' disk bytes, up to GBs)"
    if getattr(blob, "snapshot", None):
        return "a blob snapshot: the same kind of content as its base blob"
    if _SEGMENT.search("/" + blob.name):
        return "a cache segment: AES-256-GCM ciphertext of compressed disk blocks, nothing readable"
    if (getattr(blob, "size", 0) or 0) > MAX_BLOB:
        return f"larger than {MAX_BLOB // 2**20} MiB"
    return None


def scan_blobs(scanner: Scanner, service, *, workers: int = 8) -> None:
    """Every container of the account: container and blob metadata and names, and the
    content of every blob but disk bytes and ciphertext (see _blob_skip)."""
    from azure.core.exceptions import ResourceNotFoundError

    cov = scanner.coverage
    todo = []
    for c in service.list_containers(include_metadata=True):
        meta = json.dumps(dict(c.metadata or {})).encode()
        scanner.scan_bytes(f"container {c.name} [name, metadata]", c.name.encode() + b"\n" + meta)
        client = service.get_container_client(c.name)
        for b in client.list_blobs(include=["metadata", "snapshots"]):
            where = f"{c.name}/{b.name}" + (f"?snapshot={b.snapshot}" if getattr(b, "snapshot", None) else "")
            scanner.scan_bytes(f"{where} [name, metadata]", b.name.encode() + b"\n" +
                               json.dumps(dict(b.metadata or {})).encode())
            cov.counts[BLOB_METADATA] += 1
            why = _blob_skip(c.name, b)
            if why:
                cov.skipped.append((where, why))
            else:
                todo.append((client, c.name, b.name, where))

    def fetch(job):
        client, container, name, where = job
        try:
            return where, container, name, client.get_blob_client(name).download_blob().readall()
        except ResourceNotFoundError:
            return where, container, name, None  # deleted since the listing

    with ThreadPoolExecutor(max_workers=workers) as pool:
        for where, container, name, data in pool.map(fetch, todo):
            if data is None:
                continue
            scanner.scan_bytes(where, data)
            cov.counts[BLOBS] += 1
            if name.startswith(VAULT_PREFIXES):
                cov.counts[VAULT_DOCS] += 1


# -- the scan --------------------------------------------------------------------------------------

def scan(secrets: dict[str, bytes], *, trees: Iterable[tuple[str, Path]] = (), exclusions: Iterable[Exclusion] = (),
         sqlite_dbs: Iterable[Path] = (), result_dirs: Iterable[Path] = (), blob_service=None,
         sas_exempt: Iterable[Exclusion] = (), skip_planted: bool = True) -> Scanner:
    """Search files (trees: (coverage kind, root)), SQLite databases, Prefect result
    directories and every blob of an account; `.hits` and `.coverage` say what was found
    and what was searched. A database's files, and result directories inside a tree, are
    scanned once, in their own way."""
    scanner = Scanner(secrets, sas_exempt=sas_exempt)
    dbs = [Path(p).resolve() for p in sqlite_dbs]
    own = [Exclusion(f"{p}{s}", "scanned row by row, then raw (scan_sqlite)") for p in dbs for s in ("", "-wal", "-shm")]
    exclusions = [*own, *exclusions]
    results = [Path(r).resolve() for r in result_dirs]
    trees = [(kind, Path(root).resolve()) for kind, root in trees]
    for kind, root in trees:
        scan_files(scanner, root, exclusions, kind, result_dirs=results, skip_planted=skip_planted)
    for r in results:
        if not any(r.is_relative_to(root) for _, root in trees):
            scan_files(scanner, r, exclusions, PREFECT_RESULTS, result_dirs=[r], skip_planted=skip_planted)
    for db in dbs:
        scan_sqlite(scanner, db)
    if blob_service is not None:
        scan_blobs(scanner, blob_service)
    for e in scanner.sas_exempt:
        scanner.coverage.sas_exempted.append(f"{e.pattern}: {e.reason}")
    return scanner


# -- the lab -------------------------------------------------------------------------------------

def lab_exclusions(lab_dir: Path) -> list[Exclusion]:
    """Files under the lab's directory that hold secrets by design, or hold nothing drbook
    or the lab's services wrote; each with why."""
    d = Path(lab_dir).resolve()
    return [
        Exclusion(f"{d}/secrets", "the lab's secret files (vCenter and WinRM passwords, ARM token, Azurite key, "
                                  "encryption key): the secrets themselves, which the site config references as file:"),
        Exclusion(f"{d}/ssh/id_ed25519", "the lab's SSH client private key (the machines' key_file)"),
        Exclusion(f"{d}/machines/*/ssh_host_ed25519_key", "a lab machine's sshd host private key"),
        Exclusion(f"{d}/ca/ca.key", "the lab CA's TLS private key"),
        Exclusion(f"{d}/ca/server.key", "the TLS private key of every lab service"),
        Exclusion(f"{d}/azurite/__blobstorage__", "Azurite's raw blob extents (every blob's bytes, the disk replicas "
                                                  "among them): the blobs are scanned through the blob API instead"),
        Exclusion(f"{d}/arm", "the ARM emulator's own state (the emulated Azure's database): it keeps the SAS URL "
                              "of an active grant-access, as Azure does; drbook never writes it"),
        Exclusion(f"{d}/machines/*/disks", "the source machines' disk images: workload bytes, not written by "
                                           "drbook or a lab service's logging"),
        Exclusion(f"{d}/machines/*/minimal-bin", "symlinks to system tools (the machine without python)"),
        Exclusion(f"{d}/gocache", "the Go build cache of vcsim"),
        Exclusion(f"{d}/bin", "the vcsim binary built from Debian's govmomi source"),
        Exclusion(f"{d}/screenshots", "PNG screenshots of the browser tests: compressed images, no text to search"),
    ]


# Directories that fixtures of a test's own make under pytest's tmp (their mktemp names),
# which hold a service of the test's own or a copy of the source tree, never the lab's output.
PYTEST_OWN_DIRS = {
    "azurite": "a test's own Azurite (tests/blob_fixtures.py): its data and logs, SAS request lines included",
    "arm-azurite": "the ARM emulator tests' own Azurite (tests/arm_fixtures.py)",
    "arm-state": "the ARM emulator tests' own emulator state (SAS URLs of its grants)",
    "arm-certs": "the ARM emulator tests' own CA and TLS keys",
    "winrm-certs": "the WinRM tests' own CA and TLS keys",
    "winrm-secret": "the WinRM tests' own responder password",
    "sshlab": "the SSH tests' own sshd, keys and streams (tests/test_ssh.py)",
    "vcsim": "a vCenter simulator of a test module's own, with its own password",
    "source": "the packaging test's copy of the source tree (its code names the public Azurite key)",
    "wheel": "the packaging test's wheel and its unpacked copy of the source",
}


def pytest_tmp_roots(basetemp: Path) -> list[Path]:
    """The retained pytest session directories (pytest-N) beside this session's: phase 1 of
    `make test` ran in the one before (tests/run.sh)."""
    base = Path(basetemp).resolve()
    for parent in (base, *base.parents):
        if parent.name.startswith("pytest-of-"):
            return sorted((p for p in parent.iterdir() if re.fullmatch(r"pytest-\d+", p.name)
                           and p.is_dir() and not p.is_symlink()), key=lambda p: int(p.name.split("-")[1]))
    return [base]


def pytest_exclusions(roots: list[Path]) -> list[Exclusion]:
    out = []
    for root in roots:
        for name, reason in PYTEST_OWN_DIRS.items():
            out.append(Exclusion(f"{root}/*/{name}[0-9]*", reason))
            out.append(Exclusion(f"{root}/{name}[0-9]*", reason))
    return out


def lab_sas_exempt(lab_dir: Path) -> list[Exclusion]:
    d = Path(lab_dir).resolve()
    return [Exclusion(f"{d}/run/azurite.log", "Azurite's access log (the emulated storage service logs every "
                                              "request line, a SAS URL's signature included; Azure's own storage "
                                              "logs redact it). Still searched for every other secret.")]


def lab_blob_service(lab: dict):
    from drbook.adapters.blobstore import blob_service_from

    az = lab["azurite"]
    return blob_service_from(az["blob_endpoint"], az["account"], az["key"], lab["ca_bundle"])


def prefect_db(lab: dict) -> Path:
    return Path(lab["lab_dir"]) / "prefect" / "prefect.db"


def scan_lab(lab: dict, secrets: dict[str, bytes], basetemp: Path | None = None) -> Scanner:
    """The lab's directory, its Prefect database and the results Prefect stored, the pytest
    sessions' tmp directories, and every blob of the lab's Azurite account."""
    lab_dir = Path(lab["lab_dir"]).resolve()
    db = prefect_db(lab)
    roots = pytest_tmp_roots(basetemp) if basetemp else []
    trees = [(LAB_FILES, lab_dir), *((PYTEST_FILES, r) for r in roots)]
    return scan(secrets, trees=trees, exclusions=[*lab_exclusions(lab_dir), *pytest_exclusions(roots)],
                sqlite_dbs=[db] if db.exists() else [], result_dirs=prefect_result_dirs(db),
                blob_service=lab_blob_service(lab), sas_exempt=lab_sas_exempt(lab_dir))


# -- has the lab seen a lifecycle? -------------------------------------------------------------

DRILL_FLOWS = ("test-failover", "scheduled-drill")


@dataclass
class Lifecycle:
    failover_records: int = 0  # succeeded failovers in any vault of the account
    drill_records: int = 0  # succeeded or cleaned-up drills
    failover_runs: int = 0  # completed flow runs of `failover` in the Prefect database
    drill_runs: int = 0  # completed runs of a drill flow

    @property
    def complete(self) -> bool:
        return all((self.failover_records, self.drill_records, self.failover_runs, self.drill_runs))


def lifecycle_seen(lab: dict, service=None) -> Lifecycle:
    seen = Lifecycle()
    service = service or lab_blob_service(lab)
    for c in service.list_containers():
        if c.name == ARM_DISKS_CONTAINER:
            continue
        client = service.get_container_client(c.name)
        for prefix, ok in (("failovers/", {"succeeded", "committed"}), ("drills/", {"succeeded", "cleaned-up"})):
            for name in client.list_blob_names(name_starts_with=prefix):
                try:
                    status = json.loads(client.get_blob_client(name).download_blob().readall()).get("status")
                except (ValueError, AttributeError):
                    continue
                if status in ok and prefix == "failovers/":
                    seen.failover_records += 1
                elif status in ok:
                    seen.drill_records += 1
    db = prefect_db(lab)
    if db.exists():
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=60)
        try:
            rows = con.execute("SELECT flow.name, count(*) FROM flow_run JOIN flow ON flow.id = flow_run.flow_id "
                               "WHERE flow_run.state_type = 'COMPLETED' GROUP BY flow.name").fetchall()
        finally:
            con.close()
        runs = dict(rows)
        seen.failover_runs = runs.get("failover", 0)
        seen.drill_runs = sum(runs.get(n, 0) for n in DRILL_FLOWS)
    return seen
