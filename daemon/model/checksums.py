"""Bundle checksums: streamed SHA-256 of files and folders, and verification of one backend's files.

`load_bundle` only parses and checks that files exist; hashing is separate and selective. `verify_files`
hashes the files the chosen backend uses plus the shared ones (tokenizer, mel filters, window), and remembers
each verified file by (path, size, mtime_ns) in a small JSON cache in the user's cache folder, so a second
start hashes nothing. A changed file (new size or mtime) is hashed again; `force=True` hashes everything.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from daemon.errors import BundleError

if TYPE_CHECKING:
    from daemon.model.bundle import Bundle

log = logging.getLogger(__name__)

BLOCK = 1 << 20  # bytes read at a time: hashing never holds a whole file in memory
CACHE_NAME = "verified.json"
APP_DIR = "cohere-transcribe"


def sha256_of(path: Path) -> str:
    """SHA-256 of a file, or of a folder's files (relative path + each file's SHA-256, in sorted order)."""
    if not path.is_dir():
        return _file_digest(path).hex()
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(path)).encode())
        h.update(_file_digest(f))
    return h.hexdigest()


def _file_digest(path: Path) -> bytes:
    """SHA-256 of one file, read in blocks."""
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(BLOCK), b""):
            h.update(block)
    return h.digest()


def backend_files(bundle: Bundle, backend_name: str) -> list[str]:
    """The manifest `files` entries one backend needs: its graph files, the files beside them in its folders
    (ONNX external weights), and the shared tokenizer, mel filters and window; nothing of other backends."""
    if backend_name not in bundle.backends:
        raise BundleError(f"the bundle {bundle.root} has no {backend_name!r} model files (it has: "
                          f"{', '.join(sorted(bundle.backends))})")
    spec = bundle.backends[backend_name]
    graphs = {g.path.relative_to(bundle.root) for g in (*spec.encoders.values(), spec.decoder)}
    folders = {g.parent for g in graphs if g.parent != Path(".")}
    shared = set(bundle.shared_files)
    listed: dict[str, str] = bundle.manifest["files"]
    return sorted(rel for rel in listed
                  if rel in shared or Path(rel) in graphs or Path(rel).parent in folders)


def verify_files(bundle: Bundle, backend_name: str, force: bool = False) -> list[str]:
    """Check the SHA-256 of the files `backend_name` uses against the manifest; returns the files hashed.

    Files verified before with the same (path, size, mtime_ns) are skipped unless `force`.

    Raises:
        BundleError: naming the first file whose checksum differs.
    """
    listed: dict[str, str] = bundle.manifest["files"]
    cache_path = cache_file()
    cache = _read_cache(cache_path)
    hashed: list[str] = []
    for rel in backend_files(bundle, backend_name):
        path = (bundle.root / rel).resolve()
        entry = {"stamp": _stamp(path), "sha256": listed[rel]}
        if not force and cache.get(str(path)) == entry:
            continue
        if not hashed:
            log.info("verifying the checksums of %s (%s backend)", bundle.root, backend_name)
        hashed.append(rel)
        if sha256_of(path) != listed[rel]:
            cache.pop(str(path), None)
            _write_cache(cache_path, cache)
            raise BundleError(f"checksum mismatch for {bundle.root / rel}: the file was changed or damaged")
        cache[str(path)] = entry
    if hashed:
        _write_cache(cache_path, cache)
    return hashed


def _stamp(path: Path) -> list[Any]:
    """What must stay the same for a verified file to count as unchanged: size and mtime of each file (a
    folder's files with their relative paths)."""
    if not path.is_dir():
        st = path.stat()
        return [st.st_size, st.st_mtime_ns]
    out: list[Any] = []
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        st = f.stat()
        out.append([str(f.relative_to(path)), st.st_size, st.st_mtime_ns])
    return out


def cache_file() -> Path:
    """$XDG_CACHE_HOME/cohere-transcribe/verified.json; without it ~/Library/Caches/… on macOS, ~/.cache/…
    elsewhere."""
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        base = Path(xdg)
    elif platform.system() == "Darwin":
        base = Path.home() / "Library" / "Caches"
    else:
        base = Path.home() / ".cache"
    return base / APP_DIR / CACHE_NAME


def _read_cache(path: Path) -> dict[str, Any]:
    """The cache's entries; an unreadable or malformed cache counts as empty."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_cache(path: Path, cache: dict[str, Any]) -> None:
    """Replace the cache file atomically; an unwritable cache folder only means hashing again next time."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".verified-", suffix=".json")
    except OSError as e:
        log.debug("not caching verified checksums in %s: %s", path, e)
        return
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(cache, fh)
        os.replace(tmp, path)
    except OSError as e:
        log.debug("not caching verified checksums in %s: %s", path, e)
        Path(tmp).unlink(missing_ok=True)
