"""The package as a physicist installs it: a wheel, built the way ``python -m build`` builds it
(an sdist, then the wheel from the unpacked sdist), installed into a fresh virtual environment
outside the checkout, without Pythia.

Installing every dependency from the package index would take minutes and pull a CUDA torch, so
the fresh environment gets the wheel alone (``--no-deps``) and borrows the dependencies already
installed beside this test: a ``.pth`` file lists a folder of links to the entries of this
interpreter's site-packages, leaving out the checkout's own editable ``sophon``/``app`` (their
``__editable__`` finder and metadata) and the ``generate`` extra's Pythia and FastJet. So what
the fresh environment imports as ``sophon`` and ``app`` can only be the installed wheel, and
``pythia8mc`` is not installed there at all.

The wheel is built from a copy of the working tree (tracked and untracked, not ignored, files). A
shipped file that differs from its ``data_manifest.yaml`` entry in the working tree (a
checkpoint that a running ``make model`` rewrites in place) is taken from the git index: the
build refuses a file that the manifest does not vouch for, and a release ships the committed one.
"""

from __future__ import annotations

import hashlib
import html
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tarfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from sophon import __version__
from sophon.manifest import load_manifest, sha256_file

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
DEPENDENCIES = Path(sysconfig.get_paths()["purelib"])  # this interpreter's site-packages
# entries of DEPENDENCIES the fresh environment must not see: the checkout's editable install and
# the generate extra's generator and jet clustering
HIDDEN = re.compile(r"^(sophon|sophon_explorer|__editable__|pythia8|fastjet)|^app$|\.pth$"
                    r"|^__pycache__$", re.IGNORECASE)
GENERATE_MESSAGE = ("sophon.generate (event generation with Pythia 8 and FastJet) needs "
                    "pythia8mc and fastjet, which are not installed: "
                    "pip install 'sophon-explorer[generate]'")
SERVE_TIMEOUT = 300.0  # the first page loads the default dataset, on a busy machine


def _run(command: list[str], *, cwd: Path, timeout: float = 300, env: dict | None = None,
         check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                            env=env)
    if check and result.returncode != 0:
        raise AssertionError(f"{command} exited {result.returncode}:\n{result.stdout[-3000:]}\n"
                             f"{result.stderr[-3000:]}")
    return result


def _clean_environment(**changes: str) -> dict[str, str]:
    """This process's environment without anything that would point Python or the app at the
    checkout."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "SOPHON_DATA", "SOPHON_MODELS",
                        "SOPHON_OUTPUT", "PYTHONSTARTUP")}
    env.update(changes)
    return env


def _git(*arguments: str) -> bytes:
    return subprocess.run(["git", "-C", str(ROOT), *arguments], capture_output=True,
                          check=True, timeout=60).stdout


# --- building -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("wheel")


@pytest.fixture(scope="module")
def source_tree(work) -> Path:
    """A copy of the working tree (with shipped files the manifest does not vouch for taken from
    the git index)."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("building the wheel copies the checkout's files, listed by git")
    tree = work / "source"
    files = _git("ls-files", "-z", "--cached", "--others", "--exclude-standard").split(b"\0")
    for name in filter(None, (f.decode() for f in files)):
        if (ROOT / name).is_file():
            (tree / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, tree / name)
    for entry in load_manifest(tree / "data_manifest.yaml"):
        shipped = tree / entry.path
        if shipped.is_file() and sha256_file(shipped) != entry.sha256:
            shipped.write_bytes(_git("show", f":{entry.path}"))
    return tree


@pytest.fixture(scope="module")
def distributions(source_tree, work) -> tuple[Path, Path]:
    """(sdist, wheel): the sdist of the source tree, and the wheel built from the unpacked
    sdist, as ``python -m build`` does (here without build isolation: this environment's
    setuptools and pyyaml, no index)."""
    dist = work / "dist"
    backend = "from setuptools import build_meta as b; import sys; print(b.{}(sys.argv[1]))"
    sdist = dist / _run([sys.executable, "-c", backend.format("build_sdist"), str(dist)],
                        cwd=source_tree, env=_clean_environment()).stdout.split()[-1]
    with tarfile.open(sdist) as archive:
        archive.extractall(work / "unpacked", filter="data")
    unpacked = work / "unpacked" / sdist.name.removesuffix(".tar.gz")
    wheel = dist / _run([sys.executable, "-c", backend.format("build_wheel"), str(dist)],
                        cwd=unpacked, env=_clean_environment()).stdout.split()[-1]
    return sdist, wheel


@pytest.fixture(scope="module")
def wheel(distributions) -> Path:
    return distributions[1]


# --- the fresh environment ----------------------------------------------------------------------
@dataclass(frozen=True)
class FreshEnvironment:
    """A virtual environment: its folder and its site-packages."""

    folder: Path
    site: Path

    @property
    def python(self) -> str:
        return str(self.folder / "bin" / "python")

    @property
    def sophon(self) -> str:
        """The console script the wheel installs."""
        return str(self.folder / "bin" / "sophon")

    def shipped(self, *parts: str) -> Path:
        """A path under the installed package's shipped files."""
        return self.site.joinpath("sophon", "_shipped", *parts)


@pytest.fixture(scope="module")
def fresh_env(work) -> FreshEnvironment:
    """A new virtual environment whose only path to other packages is the dependency view."""
    venv = work / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=work)
    view = work / "dependencies"
    view.mkdir()
    for entry in DEPENDENCIES.iterdir():
        if not HIDDEN.search(entry.name):
            (view / entry.name).symlink_to(entry)
    site = Path(_run([str(venv / "bin" / "python"), "-c",
                      "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                     cwd=work).stdout.strip())
    (site / "checkout-dependencies.pth").write_text(f"{view}\n")
    return FreshEnvironment(venv, site)


def _pip(venv: FreshEnvironment, *arguments: str, cwd: Path) -> subprocess.CompletedProcess:
    """This environment's pip, acting on ``venv`` (which has no pip of its own)."""
    return _run([sys.executable, "-m", "pip", "--python", venv.python,
                 "--disable-pip-version-check", *arguments], cwd=cwd, env=_clean_environment())


@pytest.fixture(scope="module")
def resolution(fresh_env, wheel, work) -> dict:
    """What pip would install for the wheel into the fresh environment (before it is there),
    from no index: ``pip install --dry-run --report``."""
    report = work / "resolution.json"
    _pip(fresh_env, "install", "--dry-run", "--no-index", "--report", str(report), str(wheel),
         cwd=work)
    return json.loads(report.read_text())


@pytest.fixture(scope="module")
def installed(fresh_env, wheel, work, resolution) -> FreshEnvironment:
    """The fresh environment with the wheel installed (``--no-deps``)."""
    _pip(fresh_env, "install", "--no-deps", "--no-index", str(wheel), cwd=work)
    return fresh_env


def _fresh_python(venv: FreshEnvironment, code: str, cwd: Path, check: bool = True):
    return _run([venv.python, "-c", code], cwd=cwd, env=_clean_environment(),
                check=check)


# --- the distributions --------------------------------------------------------------------------
def test_the_wheel_carries_the_library_the_app_and_the_verified_default(wheel, distributions,
                                                                        source_tree):
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        python_sources = {str(p.relative_to(source_tree)) for package in ("sophon", "app")
                          for p in (source_tree / package).rglob("*.py")
                          if "__pycache__" not in p.parts}
        assert python_sources <= names, sorted(python_sources - names)
        shipped = "sophon/_shipped/"
        manifest = archive.read(shipped + "data_manifest.yaml")
        assert manifest == (source_tree / "data_manifest.yaml").read_bytes()
        entries = load_manifest(source_tree / "data_manifest.yaml")
        assert {e.path for e in entries} >= {"data/default/sm.parquet",
                                             "data/models/sophon-small-v2.pt"}
        for entry in entries:  # every listed dataset and model, byte for byte what it lists
            content = archive.read(shipped + entry.path)
            assert (len(content), hashlib.sha256(content).hexdigest()) == (entry.size,
                                                                            entry.sha256)
            if entry.kind == "model":  # with its model card
                assert shipped + str(Path(entry.path).with_suffix(".md")) in names
        assert not [n for n in names if n.startswith(("tests/", "build/", "data/", "notebooks/"))]
        dist_info = f"sophon_explorer-{__version__}.dist-info/"
        assert "sophon = sophon.cli:main" in archive.read(dist_info + "entry_points.txt").decode()
        metadata = archive.read(dist_info + "METADATA").decode()
    assert f"\nVersion: {__version__}\n" in metadata
    requirements = re.findall(r"^Requires-Dist: (.+)$", metadata, re.MULTILINE)
    core = [r for r in requirements if "extra ==" not in r]
    assert "torch>=2.5" in core and not [r for r in core if re.match(r"(pythia8mc|fastjet)", r)]
    assert 'pythia8mc==8.317.2; extra == "generate"' in requirements
    sdist = distributions[0]
    with tarfile.open(sdist) as archive:
        members = {Path(*Path(m).parts[1:]).as_posix() for m in archive.getnames()}
    assert {"data_manifest.yaml", "data/default/sm.parquet", "data/models/sophon-small-v2.pt",
            "setup.py", "app/main.py", "app/serve.py", "sophon/cli.py"} <= members


def test_pip_keeps_the_installed_torch(resolution):
    """Installing the wheel where a torch satisfying its lower bound is installed (here this
    environment's pinned CPU build) installs the wheel alone: pip replaces no dependency."""
    import torch

    planned = [item["metadata"]["name"] for item in resolution["install"]]
    assert planned == ["sophon-explorer"]
    torch_requirements = [r for r in resolution["install"][0]["metadata"]["requires_dist"]
                          if re.match(r"torch\b", r)]
    assert torch_requirements == ["torch>=2.5"]  # a lower bound: any newer build, CUDA or CPU
    assert tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2]) >= (2, 5)


# --- the installed package ----------------------------------------------------------------------
def test_the_installed_package_is_the_wheel_and_imports_without_pythia(installed, work):
    import torch

    probe = _fresh_python(installed, """
import importlib.metadata, importlib.util, json
import sophon, app, app.serve, torch
from sophon import manifest
print(json.dumps({
    "sophon": sophon.__file__, "app": app.__file__, "version": sophon.__version__,
    "distribution": importlib.metadata.version("sophon-explorer"),
    "pythia8mc": importlib.util.find_spec("pythia8mc") is not None,
    "torch": torch.__version__, "shipped_root": str(manifest.SHIPPED_ROOT),
    "default": str(manifest.DEFAULT_DATASET),
    "verified": [str(p) for p in manifest.verify_path(manifest.SHIPPED_ROOT / "data")],
}))
""", cwd=work)
    found = json.loads(probe.stdout)
    site = installed.site
    assert Path(found["sophon"]).is_relative_to(site), found  # not the checkout's
    assert Path(found["app"]).is_relative_to(site), found
    assert found["version"] == found["distribution"] == __version__
    assert found["pythia8mc"] is False
    assert found["torch"] == torch.__version__
    assert Path(found["shipped_root"]) == installed.shipped()
    assert Path(found["default"]) == installed.shipped("data", "default")
    assert len(found["verified"]) == len(load_manifest(ROOT / "data_manifest.yaml"))

    assert _fresh_python(installed, "import sophon, sophon.cli, sophon.store", work).returncode == 0
    generator = _fresh_python(installed, "import sophon, sophon.generate", work, check=False)
    assert generator.returncode == 1
    assert generator.stderr.strip().splitlines()[-1] == (
        f"sophon.extras.MissingExtraError: {GENERATE_MESSAGE}")

    sophon_command = installed.sophon
    version = _run([sophon_command, "--version"], cwd=work, env=_clean_environment())
    assert version.stdout.strip() == f"sophon (sophon-explorer) {__version__}"
    refused = _run([sophon_command, "generate", "sm", "--events", "10", "-o", str(work / "sm")],
                   cwd=work, env=_clean_environment(), check=False)
    assert (refused.returncode, refused.stderr.strip()) == (
        2, f"sophon generate: error: {GENERATE_MESSAGE}")
    assert not (work / "sm").exists()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get(port: int, path: str, timeout: float) -> tuple[int, str]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read().decode("utf-8", "replace")
    finally:
        connection.close()


def _stop_group(process: subprocess.Popen, grace: float = 30.0) -> None:
    """Stop ``process`` and every process of its group (``sophon serve`` and the panel server
    it started): SIGTERM, then SIGKILL for whatever is left after ``grace`` seconds."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        process.poll()  # reaps the leader, so that it leaves the group
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=grace)


def _document_strings(port: int, page: str) -> list[str]:
    """Every text in the session's Bokeh document, as a browser gets it: the websocket opened
    with the page's session token (and this machine's origin), a PULL-DOC-REQ, the reply's
    content; HTML entities decoded."""
    import asyncio

    from tornado.httpclient import HTTPRequest
    from tornado.websocket import websocket_connect

    token = re.search(r'"token":\s*"([^"]+)"', page)
    assert token, page[:3000]

    async def pull() -> str:
        request = HTTPRequest(f"ws://127.0.0.1:{port}/app/ws", request_timeout=60,
                              headers={"Origin": f"http://localhost:{port}",
                                       "Sec-WebSocket-Protocol": f"bokeh, {token.group(1)}"})
        connection = await websocket_connect(request)
        try:
            acknowledged = [await connection.read_message() for _ in range(3)]
            assert '"ACK"' in acknowledged[0], acknowledged
            for frame in ({"msgid": "1", "msgtype": "PULL-DOC-REQ"}, {}, {}):
                await connection.write_message(json.dumps(frame))
            header = json.loads(await connection.read_message())
            assert header["msgtype"] == "PULL-DOC-REPLY", header
            await connection.read_message()  # metadata
            return await connection.read_message()
        finally:
            connection.close()

    found: list[str] = []

    def walk(value) -> None:
        if isinstance(value, str):
            found.append(html.unescape(value))
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk(json.loads(asyncio.run(asyncio.wait_for(pull(), 120))))
    return found


def test_sophon_serve_serves_the_packaged_default(installed, work):
    """``sophon serve`` from the installed package, in a folder outside the checkout, with no
    data option: HTTP 200 with a Bokeh page, whose document is the app on the packaged default
    (its path and model in the dataset header) with the package version in the page header."""
    port = _free_port()
    log = (work / "serve.log").open("w")
    server = subprocess.Popen([installed.sophon, "serve", "--port", str(port)],
                              cwd=work, stdout=log, stderr=subprocess.STDOUT,
                              env=_clean_environment(SOPHON_OUTPUT=str(work / "rescored")),
                              start_new_session=True)
    try:
        deadline, page = time.monotonic() + SERVE_TIMEOUT, None
        while time.monotonic() < deadline and page is None:
            assert server.poll() is None, (work / "serve.log").read_text()
            try:
                page = _get(port, "/app", timeout=SERVE_TIMEOUT)
            except OSError:
                time.sleep(0.5)
        assert page is not None, (work / "serve.log").read_text()
        status, text = page
        assert status == 200, text[:2000]
        assert "<title>Sophon Explorer</title>" in text
        assert re.search(r'src="static/js/bokeh\.min\.js', text)  # served by this server
        strings = _document_strings(port, text)
        dataset_header = [t for t in strings if t.startswith("Dataset: ")]
        assert len(dataset_header) == 1, [t[:200] for t in strings if "ataset" in t]
        assert dataset_header[0].startswith(
            f"Dataset: <b>{installed.shipped('data', 'default')}</b> · ")
        assert "model sophon-small-v2.pt@sha256:" in dataset_header[0]  # the default's scores
        assert any(f"<span class='sophon-version'" in t and f">v{__version__}</span>" in t
                   for t in strings)
    finally:
        _stop_group(server)
        log.close()


def test_the_installed_command_scores_the_reference_jets(installed, work, reference_parquet,
                                                         reference_table):
    """``sophon score`` of the installed package with its packaged model gives the checkout's
    scores for the JetClass-II reference jets."""
    from sophon.scorers import load_scorer
    from sophon.scoring import score_table
    from sophon.store import JetDataset

    model = installed.shipped("data", "models", "sophon-small-v2.pt")
    output = work / "scored"
    _run([installed.sophon, "score", str(reference_parquet), "--model",
          str(model), "-o", str(output), "--device", "cpu", "--precision", "fp32"],
         cwd=work, env=_clean_environment())
    dataset = JetDataset(output)  # validates: 188 scores per jet summing to 1, masses, ...
    assert dataset.n_jets == reference_table.num_rows
    assert dataset.metadata.model_id.startswith("sophon-small-v2.pt@sha256:")
    assert dataset.metadata.sophon_version == __version__
    _, probabilities, latents = score_table(
        reference_table, load_scorer(ROOT / "data" / "models" / "sophon-small-v2.pt", device="cpu",
                                     precision="fp32"))
    assert abs(dataset.scores - probabilities).max() < 1e-5
    assert abs(dataset.latents - latents).max() < 1e-4
