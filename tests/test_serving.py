"""Serving safely: `panel serve` started with app/serve.py's own arguments (the ones `make app`
uses) refuses websockets from foreign origins; the workshop room refuses visitors without the
password; the rescoring limits of app/limits.py hold.

The servers listen on a free port of 127.0.0.1 only (the room too: its arguments are the room's,
with the loopback address to listen on). They serve a missing dataset: the page then is the
dataset message, quick to build, and the handshakes tested here do not depend on the data.
"""

from __future__ import annotations

import asyncio
import http.client
import importlib.util
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
READY_TIMEOUT = 90.0
REQUEST_TIMEOUT = 20.0


def _load_serve():
    """app/serve.py by path: it needs only the standard library (no app package import)."""
    spec = importlib.util.spec_from_file_location("sophon_app_serve", ROOT / "app" / "serve.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


serve = _load_serve()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _request(port: int, method: str, path: str, body: str | None = None,
             headers: dict | None = None) -> http.client.HTTPResponse:
    """One request to 127.0.0.1:PORT, redirects not followed; the body is read."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        response.text = response.read().decode("utf-8", "replace")
        return response
    finally:
        connection.close()


class Server:
    """A ``panel serve`` subprocess, waited for until it answers; always stopped."""

    def __init__(self, serving, port: int, log: Path, ready_path: str = "/app"):
        self.serving, self.port, self.log = serving, port, log
        env = {**serving.env, "PYTHONUNBUFFERED": "1",
               "SOPHON_OUTPUT": str(log.parent / "output"),
               "SOPHON_MODELS": str(log.parent / "models")}
        self.process = subprocess.Popen(serving.command, cwd=ROOT, env=env,
                                        stdout=log.open("w"), stderr=subprocess.STDOUT)
        try:
            self._wait(ready_path)
        except BaseException:
            self.stop()
            raise

    def _wait(self, path: str) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"panel serve exited:\n{self.log.read_text()}")
            try:
                if _request(self.port, "GET", path).status < 500:
                    return
            except OSError:
                time.sleep(0.3)
        raise RuntimeError(f"panel serve not ready after {READY_TIMEOUT} s:\n"
                           f"{self.log.read_text()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=15)
        self.serving.close()


def _token(page: str) -> str:
    match = re.search(r'"token":\s*"([^"]+)"', page)
    assert match, page[:2000]
    return match.group(1)


def _websocket(port: int, origin: str, token: str, cookie: str | None = None):
    """Open /app/ws as a browser would (Origin, bokeh subprotocol with the session token, the
    login cookie if any): ("accepted", first message) or ("refused", HTTP status)."""
    from tornado.httpclient import HTTPClientError, HTTPRequest
    from tornado.websocket import websocket_connect

    async def handshake():
        headers = {"Origin": origin, "Sec-WebSocket-Protocol": f"bokeh, {token}"}
        if cookie:
            headers["Cookie"] = cookie
        request = HTTPRequest(f"ws://127.0.0.1:{port}/app/ws", headers=headers,
                              connect_timeout=REQUEST_TIMEOUT, request_timeout=REQUEST_TIMEOUT)
        try:
            connection = await websocket_connect(request)
        except HTTPClientError as error:
            return "refused", error.code
        try:
            message = await asyncio.wait_for(connection.read_message(), REQUEST_TIMEOUT)
        finally:
            connection.close()
        return "accepted", message

    return asyncio.run(asyncio.wait_for(handshake(), 3 * REQUEST_TIMEOUT))


# --- the configuration ---------------------------------------------------------------------------
def test_make_app_serves_on_loopback_with_its_own_origins():
    makefile = (ROOT / "Makefile").read_text()
    assert "HOST   ?= 127.0.0.1" in makefile
    recipe = makefile.split("\napp: install\n", 1)[1].split("\n\n", 1)[0]
    assert "app/serve.py --host $(HOST) --port $(PORT)" in recipe and "'*'" not in recipe
    arguments = serve.panel_arguments("127.0.0.1", 5006, "data/default")
    assert arguments[arguments.index("--address") + 1] == "127.0.0.1"
    allowed = [arguments[i + 1] for i, a in enumerate(arguments)
               if a == "--allow-websocket-origin"]
    assert allowed == ["localhost:5006", "127.0.0.1:5006"]
    assert "--basic-auth" not in arguments
    assert serve.local(port=5006).url == "http://localhost:5006/app"


def test_other_hosts_need_a_password(tmp_path):
    assert serve.is_loopback("localhost") and serve.is_loopback("127.0.0.1")
    assert not serve.is_loopback("0.0.0.0") and not serve.is_loopback("192.168.1.20")
    with pytest.raises(ValueError, match="needs a password"):
        serve.panel_arguments("0.0.0.0", 5006)
    room = serve.room("192.168.1.20", 6006, "data/default", password="Correct-Horse",
                      directory=tmp_path)
    try:
        arguments = room.command
        assert arguments[arguments.index("--address") + 1] == "192.168.1.20"
        assert [arguments[i + 1] for i, a in enumerate(arguments)
                if a == "--allow-websocket-origin"] == ["192.168.1.20:6006"]
        auth_file = Path(arguments[arguments.index("--basic-auth") + 1])
        assert json.loads(auth_file.read_text()) == {"workshop": "Correct-Horse"}
        assert auth_file.stat().st_mode & 0o077 == 0  # readable by this user only
        assert "Correct-Horse" not in " ".join(arguments)  # not in the process list
        assert len(room.env["PANEL_COOKIE_SECRET"]) >= 32
        text = room.describe()
        assert "http://192.168.1.20:6006/app" in text and "Correct-Horse" in text
        assert "unencrypted" in text
    finally:
        room.close()
    assert not auth_file.exists()
    wildcard = serve.room("0.0.0.0", 6006, share="10.1.2.3", directory=tmp_path)
    try:
        assert wildcard.url == "http://10.1.2.3:6006/app"
        assert "10.1.2.3:6006" in wildcard.command and len(wildcard.password) >= 12
    finally:
        wildcard.close()


# --- the default setup, served -------------------------------------------------------------------
@pytest.fixture(scope="module")
def default_server(tmp_path_factory):
    port = _free_port()
    tmp = tmp_path_factory.mktemp("default-server")
    server = Server(serve.local("127.0.0.1", port, str(tmp / "no-dataset")), port,
                    tmp / "panel.log")
    yield server
    server.stop()


def test_default_refuses_a_foreign_origin(default_server):
    port = default_server.port
    page = _request(port, "GET", "/app")
    assert page.status == 200
    token = _token(page.text)
    assert _websocket(port, "http://evil.example", token) == ("refused", 403)
    assert _websocket(port, f"http://evil.example:{port}", token) == ("refused", 403)
    state, message = _websocket(port, f"http://localhost:{port}", token)
    assert state == "accepted" and '"ACK"' in message
    state, _ = _websocket(port, f"http://127.0.0.1:{port}", _token(_request(port, "GET",
                                                                             "/app").text))
    assert state == "accepted"
    assert "Refusing websocket connection from Origin 'http://evil.example'" in \
        default_server.log.read_text()


# --- the room, served ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def room_server(tmp_path_factory):
    port = _free_port()
    tmp = tmp_path_factory.mktemp("room-server")
    # the room's arguments, listening on loopback only for the test
    serving = serve.room("127.0.0.1", port, str(tmp / "no-dataset"), password="Room-Pass-42",
                         share="127.0.0.1", directory=tmp)
    server = Server(serving, port, tmp / "panel.log", ready_path="/login")
    yield server
    server.stop()


def _login(port: int, user: str, password: str) -> http.client.HTTPResponse:
    return _request(port, "POST", "/login",
                    body=urllib.parse.urlencode({"username": user, "password": password}),
                    headers={"Content-Type": "application/x-www-form-urlencoded"})


def _user_cookie(response: http.client.HTTPResponse) -> str | None:
    """The signed login cookie ``user=...`` the response sets, if any."""
    for header in response.headers.get_all("Set-Cookie") or []:
        pair = header.split(";", 1)[0]
        if pair.startswith("user=") and pair not in ("user=", 'user=""'):
            return pair
    return None


def test_room_refuses_visitors_without_the_password(room_server):
    port = room_server.port
    anonymous = _request(port, "GET", "/app")
    # Panel's basic auth answers a page request without the login cookie with its login page
    assert anonymous.status == 302
    assert anonymous.getheader("Location").endswith("login?next=%2Fapp")
    assert '"token"' not in anonymous.text
    # a websocket without the login cookie is refused, whatever its origin
    assert _websocket(port, f"http://127.0.0.1:{port}", "no-token") == ("refused", 403)

    wrong = _login(port, "workshop", "room-pass-42")  # case matters
    assert wrong.status == 302 and "error=" in wrong.getheader("Location")
    assert _user_cookie(wrong) is None
    stranger = _login(port, "somebody", "Room-Pass-42")  # the user name matters too
    assert "error=" in stranger.getheader("Location") and _user_cookie(stranger) is None
    # a forged cookie does not pass (it is signed with the generated secret)
    assert _request(port, "GET", "/app", headers={"Cookie": "user=workshop"}).status == 302

    right = _login(port, "workshop", "Room-Pass-42")
    assert right.status == 302 and "error=" not in right.getheader("Location")
    cookie = _user_cookie(right)
    assert cookie is not None
    page = _request(port, "GET", "/app", headers={"Cookie": cookie})
    assert page.status == 200
    token = _token(page.text)
    assert _websocket(port, "http://evil.example", token, cookie) == ("refused", 403)
    state, message = _websocket(port, f"http://127.0.0.1:{port}", token, cookie)
    assert state == "accepted" and '"ACK"' in message


# --- the per-session limits ----------------------------------------------------------------------
if str(ROOT) not in sys.path:  # `app` is a package beside `sophon` in the repository root
    sys.path.insert(0, str(ROOT))

from app.limits import Budget, LimitReached, Limits, SessionUsage, session_usage  # noqa: E402


def _small(**changes) -> Limits:
    values = dict(jobs_per_session=1, jobs_total=2, session_bytes=900, output_bytes=3000,
                  max_age_s=3600.0)
    values.update(changes)
    return Limits(**values)


def _output(folder: Path, name: str, size: int, age_s: float = 0.0) -> Path:
    path = folder / f"{name}-rescored-tiny-0123456789.parquet"
    path.write_bytes(b"x" * size)
    stamp = time.time() - age_s
    os.utime(path, (stamp, stamp))
    return path


def test_concurrent_jobs_per_session_and_in_total(tmp_path):
    budget = Budget(tmp_path, _small())
    alice, bob, carol = SessionUsage(), SessionUsage(), SessionUsage()
    first = budget.admit(alice, tmp_path / "a.parquet", 10)
    with pytest.raises(LimitReached, match="This session already has 1 rescoring job"):
        budget.admit(alice, tmp_path / "b.parquet", 10)
    second = budget.admit(bob, tmp_path / "b.parquet", 10)
    with pytest.raises(LimitReached, match=r"already running 2 rescoring jobs.*\(2\)"):
        budget.admit(carol, tmp_path / "c.parquet", 10)
    # joining another session's job holds one of the session's slots, not the server's
    with pytest.raises(LimitReached, match="This session already has"):
        budget.join(bob, first)
    budget.join(alice, first)  # its own job: nothing changes
    budget.close(second, written=10)
    assert bob.running == 0 and budget.running == 1
    budget.join(bob, first)
    assert bob.running == 1 and budget.running == 1
    budget.close(first, written=10)
    budget.close(first, written=10)  # closing twice counts once
    assert alice.running == bob.running == 0 and budget.running == 0
    assert alice.bytes_written == 10 and bob.bytes_written == 10  # joining writes nothing
    budget.admit(carol, tmp_path / "c.parquet", 10)


def test_bytes_written_per_session(tmp_path):
    budget = Budget(tmp_path, _small(jobs_per_session=2, jobs_total=5))
    session = SessionUsage()
    ticket = budget.admit(session, tmp_path / "a.parquet", 500)
    # the estimate of an unfinished job is reserved
    with pytest.raises(LimitReached, match=r"would write about 500 B.*\) 500 B of the 900 B"):
        budget.admit(session, tmp_path / "b.parquet", 500)
    budget.close(ticket, written=600)  # charged with what was really written
    assert session.bytes_written == 600 and session.bytes_reserved == 0
    with pytest.raises(LimitReached, match=r"already written \(or is writing\) 600 B of the"):
        budget.admit(session, tmp_path / "b.parquet", 301)
    budget.close(budget.admit(session, tmp_path / "b.parquet", 300))  # exactly the budget
    budget.close(budget.admit(session, tmp_path / "b.parquet", 0))  # reusing costs nothing
    budget.admit(SessionUsage(), tmp_path / "b.parquet", 900)  # another session has its own


def test_output_folder_size_evicts_the_oldest_unused(tmp_path):
    in_use = set()
    budget = Budget(tmp_path, _small(session_bytes=10_000), in_use=lambda: in_use)
    oldest = _output(tmp_path, "oldest", 1000, age_s=300)
    loaded = _output(tmp_path, "loaded", 1000, age_s=200)
    newer = _output(tmp_path, "newer", 1000, age_s=100)
    foreign = tmp_path / "notes.parquet"  # not the app's: never deleted, never counted
    foreign.write_bytes(b"y" * 5000)
    in_use.add(loaded)
    assert budget.used_bytes() == 3000
    budget.admit(SessionUsage(), tmp_path / "new.parquet", 1500)
    assert not oldest.exists() and not newer.exists() and loaded.exists() and foreign.exists()
    with pytest.raises(LimitReached, match="The output folder is full"):
        budget.admit(SessionUsage(), tmp_path / "more.parquet", 1000)
    assert loaded.exists()


def test_old_outputs_are_cleaned_up(tmp_path):
    in_use = set()
    budget = Budget(tmp_path, _small(), in_use=lambda: in_use)
    old = _output(tmp_path, "old", 10, age_s=7200)
    recent = _output(tmp_path, "recent", 10, age_s=60)
    old_loaded = _output(tmp_path, "loaded", 10, age_s=7200)
    in_use.add(old_loaded)
    stale = tmp_path / f".{old.name}.abc123.tmp"  # an interrupted atomic write
    stale.write_bytes(b"z")
    os.utime(stale, (time.time() - 7200,) * 2)
    foreign = tmp_path / "mine.parquet"
    foreign.write_bytes(b"y")
    os.utime(foreign, (time.time() - 7200,) * 2)
    running = budget.admit(SessionUsage(), tmp_path / "job-rescored-tiny-1.parquet", 0)
    running_temporary = tmp_path / ".job-rescored-tiny-1.parquet.def456.tmp"
    running_temporary.write_bytes(b"w")
    os.utime(running_temporary, (time.time() - 7200,) * 2)
    removed = budget.clean()
    assert set(removed) == {old, stale}
    assert recent.exists() and old_loaded.exists() and foreign.exists()
    assert running_temporary.exists()  # the job writing it is unfinished
    budget.close(running)
    assert budget.clean() == [running_temporary]
    assert budget.clean(now=time.time() + 10 * 3600) == [recent]  # still loaded: kept


def test_session_usage_is_one_per_document():
    class Document:  # a stand-in for a bokeh document
        pass

    document = Document()
    assert session_usage(document) is session_usage(document)
    assert session_usage(Document()) is not session_usage(document)
    assert session_usage(None) is not session_usage(None)


def test_the_page_shows_a_limit_as_text(tmp_path, monkeypatch, synthetic_path):
    from app.explorer import Explorer
    from app.views import rescoring

    models = tmp_path / "models"
    models.mkdir()
    (models / "tiny.pt").write_bytes(b"not read: the limit refuses the job first")
    monkeypatch.setenv("SOPHON_MODELS", str(models))
    monkeypatch.setenv("SOPHON_OUTPUT", str(tmp_path / "out"))
    small = Budget(tmp_path / "out", _small(session_bytes=10))
    monkeypatch.setattr(rescoring, "budget", lambda: small)
    view = rescoring.RescoringView(Explorer.from_path(synthetic_path))
    view._model.value = "tiny.pt"
    assert view.start() is None and view.job is None and small.running == 0
    assert isinstance(view._limit, rescoring.pn.pane.Str) and view._limit.visible
    text = view._limit.object
    assert text.startswith("⚠ This rescoring would write about") and "<" not in text
    assert "this session has already written (or is writing) 0 B of the 10 B" in text
    assert "Limits on this server" in view.__panel__()[0].object
