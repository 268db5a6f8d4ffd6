"""`cohere-transcribe fetch`: download a published Core ML model (FluidInference's), licence first, then verify it.

    model_info (licence, file list, sizes, hashes) → licence shown, "yes" or --accept-license → free space checked
    → snapshot_download (huggingface_hub: progress bar, finished files kept) → every file checked against the
    Hub's size and hash (LFS: SHA-256; plain git files: the git blob id) → the `--model` line to use.

The folder is laid out as on the Hub (`local_dir`), the layout `--model DIR` recognises. Default place:
`<data>/cohere-transcribe/models/<name>` next to the demo model (daemon.model.locate.user_data_dir: Linux
`~/.local/share`, macOS `~/Library/Application Support`); `--dir` picks another. A rerun skips finished files
(huggingface_hub keeps per-file metadata in `<dir>/.cache/huggingface/`); a file cut off mid-way starts over, and a
file that fails verification is deleted so the rerun fetches it again. The Hub is huggingface_hub's:
`HF_ENDPOINT`, `HF_TOKEN`, `HF_HUB_OFFLINE` and `HF_HUB_DISABLE_PROGRESS_BARS` apply as usual.

huggingface_hub is imported only when a fetch runs (it imports tqdm; the daemon's other commands never load it).
"""

from __future__ import annotations

import errno
import gc
import hashlib
import shutil
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path
from typing import Any, Protocol

from daemon.errors import DownloadError
from daemon.model.budget import max_segment_seconds
from daemon.model.locate import APP_DIR, user_data_dir

HUB_URL = "https://huggingface.co"
SPARE_BYTES = 200 * 1024**2  # free space asked for beyond the files themselves
GB = 1e9
FLUID_MAX_NEW_TOKENS = 108 - 10  # their decoders' cache positions − the prompt (reference/coreml-prior-art.md)
FLUID_WINDOW_S = 35.0  # their encoder's fixed input: 3500 feature frames


@dataclass(frozen=True)
class Source:
    """One published model: its Hub repository and the files of it the daemon needs."""

    repo_id: str
    patterns: tuple[str, ...]  # fnmatch patterns (as huggingface_hub's allow_patterns); each must match a file
    about: str  # one line for the user: what the files are and what they need


MODELS: dict[str, Source] = {
    "fluidinference-q8": Source(
        "FluidInference/cohere-transcribe-03-2026-coreml",
        ("q8/cohere_encoder.mlmodelc/*", "q8/cohere_decoder_cache_external_v2.mlmodelc/*", "vocab.json"),
        "INT8 encoder + v2 decoder (FluidAudio's default set), compiled .mlmodelc; Core ML on macOS 15 or later"),
    "fluidinference-fp16": Source(
        "FluidInference/cohere-transcribe-cache-external-coreml",
        ("cohere_encoder.mlpackage/*", "cohere_decoder_cache_external.mlpackage/*", "tokenizer.model"),
        "the encoder without INT8 + v1 decoder, .mlpackage (compiled on first load); Core ML on macOS 14 or later"),
}


class Hub(Protocol):
    """What fetch needs of the Hub (huggingface_hub's HfApi.model_info and snapshot_download; tests inject one)."""

    def model_info(self, repo_id: str, *, revision: str | None, files_metadata: bool) -> Any: ...

    def snapshot_download(self, repo_id: str, *, revision: str, local_dir: Path,
                          allow_patterns: list[str]) -> str: ...


@dataclass(frozen=True)
class RemoteFile:
    """One file of the repository as the Hub describes it."""

    path: str  # repository-relative, "/"-separated
    size: int
    sha256: str | None  # LFS files: SHA-256 of the content
    blob_id: str | None  # git blob id (SHA-1 of "blob <size>\0" + content); checked when there is no SHA-256


def default_dir(name: str) -> Path:
    """Where `fetch NAME` puts the files without --dir: next to the per-user demo model."""
    return user_data_dir() / APP_DIR / "models" / name


def fetch(name: str, dest: Path | None = None, accept_license: bool = False, revision: str | None = None,
          hub: Hub | None = None, ask: Callable[[str], str] | None = None, interactive: bool | None = None,
          out: Callable[[str], None] = print) -> Path:
    """Download model `name` (a key of MODELS) into `dest`, verified; returns the folder to pass as --model.

    Args:
        accept_license: accept the licence shown without asking (needed when stdin is not a terminal).
        revision: a branch, tag or commit of the repository (default: main).
        hub, ask, interactive: seams for tests (default: huggingface_hub, input(), sys.stdin.isatty()).

    Raises:
        DownloadError: network, Hub, disk or verification problems, or a licence not accepted (one line each;
            files finished before the problem are kept, so the same command resumes).
    """
    source = MODELS[name]
    dest = (dest or default_dir(name)).expanduser().absolute()
    hub = hub or HfHub()
    with hub_errors(source.repo_id, dest):
        info = hub.model_info(source.repo_id, revision=revision, files_metadata=True)
    files = select(source, remote_files(info))
    total = sum(f.size for f in files)
    out(f"{name}: {source.repo_id} at {str(info.sha)[:12]}, {len(files)} files, {size(total)}")
    out(f"  {source.about}")
    out(licence_text(source.repo_id, getattr(info, "card_data", None)))
    if not accept_license:
        confirm(dest, ask, sys.stdin.isatty() if interactive is None else interactive)
    with hub_errors(source.repo_id, dest), folder_lock(dest):
        check_space(dest, total - present_bytes(dest, files))
        in_background(lambda: hub.snapshot_download(source.repo_id, revision=str(info.sha), local_dir=dest,
                                                    allow_patterns=list(source.patterns)))
        verify(dest, files, out)
    return dest


@contextmanager
def folder_lock(dest: Path) -> Iterator[None]:
    """One fetch at a time into a folder; the partial files an interrupted one left behind are removed first
    (huggingface_hub names them `<dir>/.cache/huggingface/download/**/*.incomplete`)."""
    import fcntl

    state = dest / ".cache" / "cohere-transcribe"
    state.mkdir(parents=True, exist_ok=True)
    with (state / "fetch.lock").open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DownloadError(f"another fetch is writing into {dest}; wait for it or pick another --dir") from None
        for stale in (dest / ".cache" / "huggingface" / "download").rglob("*.incomplete"):
            stale.unlink(missing_ok=True)
        yield


def in_background(fn: Callable[[], object]) -> None:
    """Run fn in a thread and wait for it, so that Ctrl-C reaches the caller at once: huggingface_hub's download
    pool would otherwise wait for every file in flight to finish before letting KeyboardInterrupt through."""
    failure: list[BaseException] = []

    def run() -> None:
        try:
            fn()
        except BaseException as e:  # handed to the waiting thread
            failure.append(e)

    worker = threading.Thread(target=run, name="fetch", daemon=True)
    worker.start()
    while worker.is_alive():
        worker.join(0.2)
    if failure:
        raise failure[0]


def remote_files(info: Any) -> list[RemoteFile]:
    """The files of a model_info(files_metadata=True) answer."""
    files = []
    for s in info.siblings or []:
        lfs = s.lfs
        files.append(RemoteFile(s.rfilename, int(lfs.size if lfs else s.size or 0),
                                lfs.sha256 if lfs else None, s.blob_id))
    return files


def select(source: Source, files: Iterable[RemoteFile]) -> list[RemoteFile]:
    """The files the patterns pick, every pattern matching at least one (else the layout is not the one known)."""
    files = list(files)
    chosen = [f for f in files if any(fnmatch(f.path, p) for p in source.patterns)]
    for p in source.patterns:
        if not any(fnmatch(f.path, p) for f in chosen):
            raise DownloadError(f"{source.repo_id} has no file matching {p} (its layout changed?); "
                                f"see docs/macos.md to export the model yourself")
    return chosen


def licence_text(repo_id: str, card: Any) -> str:
    """What the model card says of the licence (its metadata), with where to read it."""
    licence = getattr(card, "license", None) if card is not None else None
    if isinstance(licence, list):
        licence = ", ".join(map(str, licence))
    named = getattr(card, "license_name", None) if card is not None else None
    link = getattr(card, "license_link", None) if card is not None else None
    what = f"{licence}{f' ({named})' if named else ''}" if licence else "not stated in the model card's metadata"
    return (f"Licence of these files: {what}. Read it and the model card before use: {HUB_URL}/{repo_id}"
            f"{f' and {link}' if link else ''}. (The original model, CohereLabs/cohere-transcribe-03-2026, is "
            f"Apache-2.0; this conversion is licensed by its publisher.)")


def confirm(dest: Path, ask: Callable[[str], str] | None, interactive: bool) -> None:
    """A "yes" at the prompt, or an error when there is no one to ask."""
    if not interactive:
        raise DownloadError("the licence above must be accepted: answer yes at the prompt in a terminal, or "
                            "rerun with --accept-license; nothing was downloaded")
    answer = (ask or input)(f"Accept this licence and download into {dest}? [yes/no] ")
    if answer.strip().lower() not in ("y", "yes"):
        raise DownloadError("licence not accepted; nothing was downloaded")


def present_bytes(dest: Path, files: list[RemoteFile]) -> int:
    """Bytes of the files already in place at their full size (a rerun does not fetch them again)."""
    return sum(f.size for f in files if (p := dest / f.path).is_file() and p.stat().st_size == f.size)


def free_bytes(path: Path) -> int:
    """Free bytes on the volume that holds `path` (or would: its nearest existing parent)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def check_space(dest: Path, need: int) -> None:
    free = free_bytes(dest)
    if need > 0 and free < need + SPARE_BYTES:
        raise DownloadError(f"not enough disk space in {dest}: {size(need)} to download (and 200 MB to spare), "
                            f"{size(free)} free; free some space or pick another --dir")


def size(n: int) -> str:
    return f"{n / GB:.2f} GB" if n >= GB / 10 else f"{n / 1e6:.1f} MB"


def verify(dest: Path, files: list[RemoteFile], out: Callable[[str], None]) -> None:
    """Every file at its Hub size and hash; a bad file is deleted (with huggingface_hub's record of it) so that
    the same command fetches it again."""
    total = sum(f.size for f in files)
    out(f"Verifying {len(files)} files ({size(total)}) against the Hub's sizes and hashes ...")
    for f in files:
        path = dest / f.path
        problem = file_problem(path, f)
        if problem:
            path.unlink(missing_ok=True)
            (dest / ".cache" / "huggingface" / "download" / f"{f.path}.metadata").unlink(missing_ok=True)
            raise DownloadError(f"{path}: {problem}; it was deleted: run the same command again to fetch it")
    out(f"Verified {len(files)} files in {dest}")


def file_problem(path: Path, f: RemoteFile) -> str | None:
    """Why a downloaded file does not match the Hub's description, or None."""
    if not path.is_file():
        return "missing after the download"
    size = path.stat().st_size
    if size != f.size:
        return f"{size} bytes, the Hub says {f.size}"
    if f.sha256:
        got = digest(path, hashlib.sha256())
        return None if got == f.sha256 else f"SHA-256 {got[:12]}…, the Hub says {f.sha256[:12]}…"
    if f.blob_id:
        h = hashlib.sha1(usedforsecurity=False)
        h.update(b"blob %d\0" % size)
        got = digest(path, h)
        return None if got == f.blob_id else f"git blob id {got[:12]}…, the Hub says {f.blob_id[:12]}…"
    return None


def digest(path: Path, h: Any) -> str:
    """Hex digest of a file's content, read in 1 MiB blocks."""
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return str(h.hexdigest())


@contextmanager
def hub_errors(repo_id: str, dest: Path) -> Iterator[None]:
    """Turns what huggingface_hub, the network and the disk raise into one DownloadError line."""
    try:
        yield
    except DownloadError:
        raise
    except Exception as e:
        raise DownloadError(describe(e, repo_id, dest)) from e


RESUME = "run the same command again to resume (finished files are kept)"


def describe(e: Exception, repo_id: str, dest: Path) -> str:
    """One line for an exception of huggingface_hub, httpx2 or the OS."""
    from huggingface_hub import errors as hf

    url = f"{HUB_URL}/{repo_id}"
    if isinstance(e, hf.GatedRepoError):
        return (f"{repo_id} is gated: accept its conditions at {url} while logged in, then log in here "
                f"(`hf auth login`) or set HF_TOKEN")
    if isinstance(e, hf.RepositoryNotFoundError):
        return (f"{repo_id} was not found on the Hub (renamed, removed or private; for a private one log in with "
                f"`hf auth login` or set HF_TOKEN)")
    if isinstance(e, hf.RevisionNotFoundError):
        return f"{repo_id} has no such revision: {first_line(e)}"
    if isinstance(e, hf.RemoteEntryNotFoundError):
        return f"a file of {repo_id} is missing on the Hub ({first_line(e)}); the repository changed while fetching?"
    if isinstance(e, hf.OfflineModeIsEnabled) or isinstance(e.__cause__, hf.OfflineModeIsEnabled):
        return "HF_HUB_OFFLINE is set: unset it to download"
    if is_network(e):
        return f"cannot reach the Hugging Face Hub ({type(e).__name__}: {first_line(e)}); check the network, then {RESUME}"
    if isinstance(e, hf.HfHubHTTPError):
        return f"the Hub answered {first_line(e)}; later, {RESUME}"
    if isinstance(e, OSError) and e.errno == errno.ENOSPC:
        return f"the disk is full ({dest}); free some space, then {RESUME}"
    if isinstance(e, OSError) and e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"cannot write to {dest}: {e.strerror}; pick another --dir"
    return f"download failed ({type(e).__name__}: {first_line(e)}); {RESUME}"


def is_network(e: BaseException | None) -> bool:
    """A transport error (connect, read, timeout, protocol) anywhere in the exception's chain. The HTTP client's
    classes are matched by name: huggingface_hub has used requests, httpx and httpx2 (all have TransportError or
    ConnectionError), and the daemon does not import its client."""
    from huggingface_hub.errors import LocalEntryNotFoundError

    while e is not None:
        names = {c.__name__ for c in type(e).__mro__}
        if isinstance(e, (LocalEntryNotFoundError, ConnectionError, TimeoutError)) or "TransportError" in names:
            return True
        e = e.__cause__ or e.__context__
    return False


def first_line(e: BaseException) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return " ".join(lines[:2])[:300] if lines else type(e).__name__


class HfHub:
    """The real Hub through huggingface_hub; endpoint None: HF_ENDPOINT or huggingface.co (token: HF_TOKEN or
    `hf auth login`, as huggingface_hub finds it)."""

    def __init__(self, endpoint: str | None = None) -> None:
        self.endpoint = endpoint

    def model_info(self, repo_id: str, *, revision: str | None, files_metadata: bool) -> Any:
        from huggingface_hub import HfApi

        return HfApi(endpoint=self.endpoint).model_info(repo_id, revision=revision, files_metadata=files_metadata)

    def snapshot_download(self, repo_id: str, *, revision: str, local_dir: Path, allow_patterns: list[str]) -> str:
        from huggingface_hub import snapshot_download

        folder = str(snapshot_download(repo_id, revision=revision, local_dir=local_dir, allow_patterns=allow_patterns,
                                       endpoint=self.endpoint))
        gc.collect()  # its byte-count bars close when collected: now, before the lines that follow them
        sys.stderr.flush()
        return folder


def usage_lines(folder: Path, prog: str = "cohere-transcribe") -> list[str]:
    """What to run with the fetched model (prog: how the user started this command)."""
    lines = ["", "Captions from this model:", f"  {prog} serve --model {quote(folder)}",
             f"  {prog} transcribe --model {quote(folder)} FILE.wav",
             "The first start on a Mac prepares the models for the Neural Engine (minutes, once).",
             f"This model decodes at most {FLUID_MAX_NEW_TOKENS} tokens per window, so `serve` cuts speech into "
             f"segments of at most {max_segment_seconds(FLUID_MAX_NEW_TOKENS, FLUID_WINDOW_S):g} s (docs/macos.md)."]
    if sys.platform != "darwin":
        lines.append("Note: these are Core ML files; they run on a Mac (this machine is not one).")
    return lines


def quote(path: Path) -> str:
    import shlex

    return shlex.quote(str(path))
