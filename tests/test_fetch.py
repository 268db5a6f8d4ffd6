"""`cohere-transcribe fetch`: the real huggingface_hub code path against a fake Hub on 127.0.0.1 (tests/hubfake.py).

The CLI runs as a subprocess with HF_ENDPOINT pointing at the fake Hub, as a user's would at huggingface.co:
licence shown first and required, only the needed files fetched, every file verified, the --model line printed;
each failure (offline, gated, missing, corrupt file, cut transfer, full disk, Ctrl-C) one line, and a rerun
resumes without fetching finished files again.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hubfake import FakeHub, Repo, serve

from daemon.errors import DownloadError
from daemon.model import fetch as fetch_module
from daemon.model.fetch import MODELS, HfHub, default_dir, fetch

ROOT = Path(__file__).resolve().parents[1]
Q8 = MODELS["fluidinference-q8"].repo_id
FP16 = MODELS["fluidinference-fp16"].repo_id
WEIGHT = "q8/cohere_encoder.mlmodelc/weights/weight.bin"


def blob(n: int, seed: int) -> bytes:
    """n bytes of deterministic noise (so hashes differ from file to file)."""
    return random.Random(seed).randbytes(n)


def q8_repo() -> Repo:
    """The published q8 layout (coreml-prior-art.md, addendum), small: v2 and v1 decoders, .mlpackage copies,
    vocab.json at the root."""
    files: dict[str, bytes] = {".gitattributes": b"*.bin filter=lfs diff=lfs merge=lfs -text\n",
                               "README.md": b"---\nlicense: cc-by-nc-4.0\n---\n# Cohere Transcribe Core ML\n",
                               "vocab.json": json.dumps({str(i): f"p{i}" for i in range(50)}).encode()}
    for k, graph in enumerate(("cohere_encoder", "cohere_decoder_cache_external_v2", "cohere_decoder_cache_external")):
        base = f"q8/{graph}.mlmodelc"
        files[f"{base}/model.mil"] = f"program(1.3) // {graph}\n".encode()
        files[f"{base}/metadata.json"] = json.dumps([{"name": graph}]).encode()
        files[f"{base}/coremldata.bin"] = blob(300, 10 + k)
        files[f"{base}/weights/weight.bin"] = blob(1_500_000 if k == 0 else 200_000, k)
    files["q8/cohere_encoder.mlpackage/Manifest.json"] = b"{}"
    return Repo(files, {p for p in files if p.endswith(".bin")}, {"license": "cc-by-nc-4.0"})


def fp16_repo() -> Repo:
    files = {"tokenizer.model": blob(5000, 7), "README.md": b"# fp16\n", "example.py": b"print()\n"}
    for k, graph in enumerate(("cohere_encoder", "cohere_decoder_cache_external")):
        base = f"{graph}.mlpackage"
        files[f"{base}/Manifest.json"] = b'{"fileFormatVersion": "1.0.0"}'
        files[f"{base}/Data/com.apple.CoreML/model.mlmodel"] = blob(2000, 20 + k)
        files[f"{base}/Data/com.apple.CoreML/weights/weight.bin"] = blob(100_000, 30 + k)
    return Repo(files, {p for p in files if p.endswith((".bin", ".mlmodel", ".model"))}, {"license": "cc-by-nc-4.0"})


Q8_WANTED = sorted(p for p in q8_repo().files if p.startswith(("q8/cohere_encoder.mlmodelc/",
                                                             "q8/cohere_decoder_cache_external_v2.mlmodelc/"))
                   or p == "vocab.json")


@pytest.fixture
def hub() -> Iterator[tuple[FakeHub, str]]:
    fake = FakeHub({Q8: q8_repo(), FP16: fp16_repo()})
    server, url = serve(fake)
    try:
        yield fake, url
    finally:
        fake.release.set()
        server.shutdown()
        server.server_close()


def env_for(endpoint: str, home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_ENDPOINT=endpoint, HF_HOME=str(home / "hf"), HF_HUB_DISABLE_TELEMETRY="1", PYTHONPATH=str(ROOT))
    return env


def cli(endpoint: str, tmp: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "daemon", "fetch", *args], env=env_for(endpoint, tmp),
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout, cwd=tmp)


def errors(stderr: str) -> list[str]:
    """The error lines of a run (huggingface_hub's progress bars share stderr)."""
    return [line for line in stderr.splitlines() if line.startswith("error")]


def downloaded(folder: Path) -> list[str]:
    """Repository paths present in a fetched folder (huggingface_hub's .cache and ours left out)."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                  if p.is_file() and ".cache" not in p.relative_to(folder).parts)


def test_fetch_shows_the_licence_downloads_only_what_is_needed_verifies_and_prints_the_model(
        hub: tuple[FakeHub, str], tmp_path: Path) -> None:
    fake, url = hub
    dest = tmp_path / "m"
    r = cli(url, tmp_path, "fluidinference-q8", "--dir", str(dest), "--accept-license")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "Licence of these files: cc-by-nc-4.0" in out and f"https://huggingface.co/{Q8}" in out
    assert out.index("Licence") < out.index("Verifying")
    assert f"Verified {len(Q8_WANTED)} files in {dest}" in out
    assert f"python -m daemon serve --model {dest}" in out
    assert "at most 98 tokens per window" in out and "at most 14 s" in out
    assert downloaded(dest) == Q8_WANTED  # no v1 decoder, no .mlpackage copy, no README
    repo = fake.repos[Q8]
    for p in Q8_WANTED:
        assert (dest / p).read_bytes() == repo.files[p], p
    assert set(fake.gets) == set(Q8_WANTED)


def test_fp16_layout(hub: tuple[FakeHub, str], tmp_path: Path) -> None:
    _, url = hub
    r = cli(url, tmp_path, "fluidinference-fp16", "--dir", str(tmp_path / "f"), "--accept-license")
    assert r.returncode == 0, r.stderr
    assert downloaded(tmp_path / "f") == sorted(p for p in fp16_repo().files if p not in ("README.md", "example.py"))


def test_without_a_terminal_the_licence_must_be_accepted_first(hub: tuple[FakeHub, str], tmp_path: Path) -> None:
    fake, url = hub
    r = cli(url, tmp_path, "fluidinference-q8", "--dir", str(tmp_path / "m"))
    assert r.returncode == 2
    assert "cc-by-nc-4.0" in r.stdout
    assert r.stderr.splitlines() == ["error: the licence above must be accepted: answer yes at the prompt in a "
                                     "terminal, or rerun with --accept-license; nothing was downloaded"]
    assert fake.gets == {} and not (tmp_path / "m").exists()


@pytest.mark.parametrize(("answer", "fetched"), [("yes", True), ("y", True), ("no", False), ("", False)])
def test_prompt(hub: tuple[FakeHub, str], tmp_path: Path, answer: str, fetched: bool) -> None:
    fake, url = hub
    asked: list[str] = []

    def ask(prompt: str) -> str:
        asked.append(prompt)
        return answer

    dest = tmp_path / "m"
    run = lambda: fetch("fluidinference-q8", dest, hub=HfHub(url), ask=ask, interactive=True, out=lambda s: None)  # noqa: E731
    if fetched:
        assert run() == dest and downloaded(dest) == Q8_WANTED
    else:
        with pytest.raises(DownloadError, match="licence not accepted; nothing was downloaded"):
            run()
        assert fake.gets == {}
    assert asked == [f"Accept this licence and download into {dest}? [yes/no] "]


def test_a_rerun_fetches_nothing_again(hub: tuple[FakeHub, str], tmp_path: Path) -> None:
    fake, url = hub
    args = ("fluidinference-q8", "--dir", str(tmp_path / "m"), "--accept-license")
    assert cli(url, tmp_path, *args).returncode == 0
    before = dict(fake.gets)
    r = cli(url, tmp_path, *args)
    assert r.returncode == 0, r.stderr
    assert fake.gets == before and all(n == 1 for n in before.values())


def test_offline(tmp_path: Path) -> None:
    """Nothing listens at the endpoint (a bound socket that never listens refuses connections)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        r = cli(f"http://127.0.0.1:{s.getsockname()[1]}", tmp_path, "fluidinference-q8", "--dir",
                str(tmp_path / "m"), "--accept-license")
    assert r.returncode == 2
    [line] = r.stderr.splitlines()
    assert line.startswith("error: cannot reach the Hugging Face Hub (ConnectError: ")
    assert line.endswith("check the network, then run the same command again to resume (finished files are kept)")


def test_hf_hub_offline_is_named(hub: tuple[FakeHub, str], tmp_path: Path) -> None:
    _, url = hub
    env = {**env_for(url, tmp_path), "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-m", "daemon", "fetch", "fluidinference-q8", "--accept-license", "--dir",
                        str(tmp_path / "m")], env=env, capture_output=True, text=True, timeout=60)
    assert (r.returncode, r.stderr) == (2, "error: HF_HUB_OFFLINE is set: unset it to download\n")


@pytest.mark.parametrize(("fault", "message"), [
    ("gated", f"error: {Q8} is gated: accept its conditions at https://huggingface.co/{Q8} while logged in, then "
              f"log in here (`hf auth login`) or set HF_TOKEN"),
    ("missing", f"error: {Q8} was not found on the Hub (renamed, removed or private; for a private one log in "
                f"with `hf auth login` or set HF_TOKEN)"),
])
def test_gated_and_missing_repositories(hub: tuple[FakeHub, str], tmp_path: Path, fault: str, message: str) -> None:
    fake, url = hub
    getattr(fake, fault).add(Q8)
    r = cli(url, tmp_path, "fluidinference-q8", "--dir", str(tmp_path / "m"), "--accept-license")
    assert (r.returncode, r.stderr.splitlines()) == (2, [message])


def test_a_layout_change_is_named(hub: tuple[FakeHub, str], tmp_path: Path) -> None:
    fake, url = hub
    repo = fake.repos[Q8]
    for p in [p for p in repo.files if "_v2.mlmodelc/" in p]:
        del repo.files[p]
    r = cli(url, tmp_path, "fluidinference-q8", "--dir", str(tmp_path / "m"), "--accept-license")
    assert r.returncode == 2
    assert r.stderr == (f"error: {Q8} has no file matching q8/cohere_decoder_cache_external_v2.mlmodelc/* (its "
                        f"layout changed?); see docs/macos.md to export the model yourself\n")


def test_a_corrupt_file_is_deleted_and_the_rerun_fetches_it_again(hub: tuple[FakeHub, str], tmp_path: Path) -> None:
    fake, url = hub
    fake.corrupt.add(WEIGHT)
    args = ("fluidinference-q8", "--dir", str(tmp_path / "m"), "--accept-license")
    r = cli(url, tmp_path, *args)
    assert r.returncode == 2
    [line] = errors(r.stderr)
    sha = hashlib.sha256(fake.repos[Q8].files[WEIGHT]).hexdigest()
    assert line.startswith(f"error: {tmp_path / 'm' / WEIGHT}: SHA-256 ")
    assert line.endswith(f"the Hub says {sha[:12]}…; it was deleted: run the same command again to fetch it")
    assert not (tmp_path / "m" / WEIGHT).exists()
    fake.corrupt.clear()
    before = dict(fake.gets)
    assert cli(url, tmp_path, *args).returncode == 0
    assert {p: n - before.get(p, 0) for p, n in fake.gets.items() if n != before.get(p)} == {WEIGHT: 1}


def test_a_git_file_is_checked_by_its_blob_id(tmp_path: Path) -> None:
    """Files outside LFS have no SHA-256 on the Hub: their git blob id is checked instead."""
    from hubfake import git_blob_id

    path = tmp_path / "vocab.json"
    path.write_bytes(b'{"0": "<unk>"}')
    good = fetch_module.RemoteFile("vocab.json", 14, None, git_blob_id(b'{"0": "<unk>"}'))
    assert fetch_module.file_problem(path, good) is None
    bad = fetch_module.RemoteFile("vocab.json", 14, None, git_blob_id(b'{"0": "<UNK>"}'))
    assert (fetch_module.file_problem(path, bad) or "").startswith("git blob id ")
    assert fetch_module.file_problem(path, fetch_module.RemoteFile("vocab.json", 15, None, None)) == \
        "14 bytes, the Hub says 15"


def test_a_cut_transfer_is_one_line_and_the_rerun_completes(hub: tuple[FakeHub, str], tmp_path: Path) -> None:
    """The connection drops before the file's first byte each time: huggingface_hub retries 5 times (1 s apart),
    then fetch reports one line; the rerun fetches only that file."""
    fake, url = hub
    fake.drop.add(WEIGHT)
    args = ("fluidinference-q8", "--dir", str(tmp_path / "m"), "--accept-license")
    r = cli(url, tmp_path, *args)
    assert r.returncode == 2
    [error] = errors(r.stderr)
    assert error.startswith("error: cannot reach the Hugging Face Hub (RemoteProtocolError")
    assert downloaded(tmp_path / "m") == [p for p in Q8_WANTED if p != WEIGHT]
    fake.drop.clear()
    before = dict(fake.gets)
    assert cli(url, tmp_path, *args).returncode == 0
    assert {p: n - before.get(p, 0) for p, n in fake.gets.items() if n != before.get(p)} == {WEIGHT: 1}


def test_ctrl_c_stops_at_once_and_the_rerun_resumes(hub: tuple[FakeHub, str], tmp_path: Path) -> None:
    """Ctrl-C while the encoder weights are in flight: one line, exit 130 without waiting for the transfer; the
    rerun fetches only that file and leaves no partial file behind."""
    fake, url = hub
    fake.stall.add(WEIGHT)
    dest = tmp_path / "m"
    args = [sys.executable, "-m", "daemon", "fetch", "fluidinference-q8", "--dir", str(dest), "--accept-license"]
    p = subprocess.Popen(args, env=env_for(url, tmp_path), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    others = [q for q in Q8_WANTED if q != WEIGHT]
    deadline = time.monotonic() + 30
    while not (fake.stalled.is_set() and all((dest / q).is_file() for q in others)):
        assert time.monotonic() < deadline and p.poll() is None
        time.sleep(0.05)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=10)  # the stalled transfer is held for 30 s: exiting sooner is "at once"
    assert p.returncode == 130
    assert err.splitlines()[-1] == "interrupted: files finished so far are kept; run the same command again to resume"
    assert not (dest / WEIGHT).exists()
    fake.stall.clear()
    fake.release.set()
    before = dict(fake.gets)
    r = cli(url, tmp_path, "fluidinference-q8", "--dir", str(dest), "--accept-license")
    assert r.returncode == 0, r.stderr
    assert {q: n - before.get(q, 0) for q, n in fake.gets.items() if n != before.get(q)} == {WEIGHT: 1}
    assert not list(dest.rglob("*.incomplete"))


def test_not_enough_space_is_found_before_downloading(hub: tuple[FakeHub, str], tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    fake, url = hub
    monkeypatch.setattr(fetch_module, "free_bytes", lambda path: 10**6)
    need = sum(len(fake.repos[Q8].files[p]) for p in Q8_WANTED)
    assert round(need / 1e6, 1) == 1.7
    with pytest.raises(DownloadError, match=r"not enough disk space in .*: 1\.7 MB to download \(and 200 MB to "
                                             r"spare\), 1\.0 MB free; free some space or pick another --dir"):
        fetch("fluidinference-q8", tmp_path / "m", True, hub=HfHub(url), out=lambda s: None)
    assert fake.gets == {}


def test_a_full_disk_while_writing(tmp_path: Path) -> None:
    """ENOSPC from the download (huggingface_hub writing a file) is one line; the seam is the Hub object."""
    class FullDisk:
        def model_info(self, repo_id: str, *, revision: str | None, files_metadata: bool) -> Any:
            s = SimpleNamespace(rfilename="vocab.json", size=3, blob_id=None, lfs=None)
            pats = MODELS["fluidinference-q8"].patterns
            return SimpleNamespace(sha="c0ffee", card_data=None, siblings=[
                s, *(SimpleNamespace(rfilename=p.replace("*", "x"), size=1, blob_id=None, lfs=None) for p in pats)])

        def snapshot_download(self, repo_id: str, **kw: Any) -> str:
            raise OSError(errno.ENOSPC, "No space left on device")

    dest = tmp_path / "m"
    with pytest.raises(DownloadError) as e:
        fetch("fluidinference-q8", dest, True, hub=FullDisk(), out=lambda s: None)
    assert str(e.value) == (f"the disk is full ({dest}); free some space, then run the same command again to "
                            f"resume (finished files are kept)")


def test_one_fetch_at_a_time_per_folder(hub: tuple[FakeHub, str], tmp_path: Path) -> None:
    fake, url = hub
    fake.stall.add(WEIGHT)
    dest = tmp_path / "m"
    first = subprocess.Popen([sys.executable, "-m", "daemon", "fetch", "fluidinference-q8", "--dir", str(dest),
                              "--accept-license"], env=env_for(url, tmp_path), stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path)
    try:
        assert fake.stalled.wait(30)
        r = cli(url, tmp_path, "fluidinference-q8", "--dir", str(dest), "--accept-license")
        assert (r.returncode, r.stderr) == (2, f"error: another fetch is writing into {dest}; wait for it or pick "
                                               f"another --dir\n")
    finally:
        fake.stall.clear()
        fake.release.set()
        assert first.wait(30) == 0


def test_default_folder_is_next_to_the_demo_model(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert default_dir("fluidinference-q8") == tmp_path / "cohere-transcribe" / "models" / "fluidinference-q8"
    monkeypatch.setattr(sys, "platform", "darwin")
    assert default_dir("fluidinference-fp16") == (Path.home() / "Library" / "Application Support" /
                                                  "cohere-transcribe" / "models" / "fluidinference-fp16")


def test_huggingface_hub_is_a_light_runtime_dependency() -> None:
    """Declared in `dependencies`; what it requires (everywhere) pulls no torch and no transformers."""
    import tomllib
    from importlib.metadata import requires

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert any(d.startswith("huggingface_hub") for d in deps)
    runtime = [r for r in requires("huggingface_hub") or [] if "extra ==" not in r]
    assert runtime and not [r for r in runtime if r.split(";")[0].lower().startswith(("torch", "transformers"))]


@pytest.mark.parametrize(("name", "encoder", "decoder", "tokenizer", "contract"), [
    ("fluidinference-q8", "q8/cohere_encoder.mlmodelc", "q8/cohere_decoder_cache_external_v2.mlmodelc",
     "vocab.json", "fluidaudio-v2"),
    ("fluidinference-fp16", "cohere_encoder.mlpackage", "cohere_decoder_cache_external.mlpackage",
     "tokenizer.model", "fluidaudio-v1"),
])
def test_the_fetched_folder_is_the_layout_model_recognises(hub: tuple[FakeHub, str], tmp_path: Path, name: str,
                                                          encoder: str, decoder: str, tokenizer: str,
                                                          contract: str) -> None:
    """The folder printed as --model is found by the FluidInference loader, with the files fetch chose."""
    from daemon.model.fluidaudio import find_layout, is_fluid_folder

    _, url = hub
    dest = fetch(name, tmp_path / name, True, hub=HfHub(url), out=lambda s: None)
    layout = find_layout(dest)
    assert is_fluid_folder(dest)
    assert (layout.encoder, layout.decoder, layout.tokenizer, layout.contract) == (
        dest / encoder, dest / decoder, dest / tokenizer, contract)
