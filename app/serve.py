"""Serve the app: on this machine only (the default), or as a workshop room, on purpose.

    python app/serve.py [--data PATH] [--port 5006]     # this machine only: http://localhost:5006/app
    python app/serve.py --host 0.0.0.0 [--data PATH]    # a workshop room: prints address and password
    python app/serve.py --data PATH --dask [ADDRESS]    # scans on a Dask cluster (docs/dask.md)

``make app`` and ``make app HOST=0.0.0.0`` run it. It starts ``panel serve app`` with the
arguments of :func:`panel_arguments`, the one place they are made (tests/test_serving.py starts
the server with them too):

- default: ``--address 127.0.0.1`` (other machines cannot connect) and websocket origins
  ``localhost:PORT`` and ``127.0.0.1:PORT`` only (another web page open in the same browser cannot
  drive the app through its websocket);
- room (any host that is not a loopback address): ``--address HOST``, websocket origins limited to
  the address to share (plus the loopback ones when HOST is 0.0.0.0, for the organiser's own
  browser, and any ``--origin``), and Panel's login page (``--basic-auth`` with a JSON file,
  readable by this user only, that maps the user name to a password generated at each start, or
  ``$SOPHON_ROOM_PASSWORD``); the login cookie is signed with a secret generated at each start,
  handed to Panel as ``PANEL_COOKIE_SECRET`` so that neither appears in the process list.

Nothing is fetched from the internet (a workshop room may have no connection): the app page loads
Panel's and Bokeh's files from this server (Panel's default for ``panel serve``), and the room's
login and logout pages are Panel's own with their icon and logo taken from this server too
(:func:`write_offline_templates`; Panel's copies fetch them from its CDN).

Plain HTTP: in a room the password and the cookie cross the network unencrypted, and every
participant shares one server (see the README). A non-loopback host without a password is refused.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import importlib.util
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # (standard library only: quick to start)
APP_DIR = ROOT / "app"
LOOPBACK = "127.0.0.1"
DEFAULT_PORT = 5006
ROOM_USER = "workshop"
PASSWORD_VARIABLE = "SOPHON_ROOM_PASSWORD"
WILDCARDS = ("0.0.0.0", "::", "")
#: Where ``panel serve`` serves Panel's own files (its ``dist`` folder: icons, logo, bundles).
PANEL_STATIC = "/static/extensions/panel/"
_PANEL_CDN = re.compile(r"\{\{\s*PANEL_CDN\s*\}\}")

__all__ = ["Serving", "panel_arguments", "is_loopback", "machine_address", "origins", "room",
           "local", "main", "write_offline_templates"]


def is_loopback(host: str) -> bool:
    """Whether ``host`` is this machine only (``localhost``, 127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def machine_address() -> str:
    """This machine's address on its network (the interface of its default route), to share."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # a documentation address: UDP connect sends nothing
            address = probe.getsockname()[0]
            if address and not address.startswith("0."):
                return address
        except OSError:
            pass
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return LOOPBACK


def _netloc(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def origins(host: str, port: int, share: str | None = None, extra=()) -> list[str]:
    """The websocket origins (``host:port``) allowed: the loopback names on a loopback host; the
    shared address (and the loopback names when listening on every interface) in a room."""
    local_names = [_netloc("localhost", port), _netloc(LOOPBACK, port)]
    if is_loopback(host):
        allowed = local_names + ([_netloc(host, port)] if host not in ("localhost", LOOPBACK)
                                 else [])
    else:
        allowed = [_netloc(share or host, port)]
        if host in WILDCARDS:
            allowed += local_names
    allowed += [o if re.search(r":\d+$", o) else _netloc(o, port) for o in extra]
    return list(dict.fromkeys(allowed))


def write_offline_templates(folder: str | Path) -> tuple[Path, Path]:
    """Panel's login and logout pages, written to ``folder`` with their icon and logo taken from
    this server (:data:`PANEL_STATIC`, served without a login) instead of Panel's CDN: a room
    without internet gets them whole, and no participant's browser asks the CDN for them."""
    spec = importlib.util.find_spec("panel")  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("panel is not installed (pip install -e .)")
    templates = Path(next(iter(spec.submodule_search_locations))) / "_templates"
    written = []
    for name in ("basic_login.html", "logout.html"):
        page = _PANEL_CDN.sub(PANEL_STATIC, (templates / name).read_text(encoding="utf-8"))
        target = Path(folder) / name
        target.write_text(page, encoding="utf-8")
        written.append(target)
    return written[0], written[1]


def panel_arguments(host: str = LOOPBACK, port: int = DEFAULT_PORT, data: str | None = None, *,
                    auth_file: str | Path | None = None, share: str | None = None,
                    extra_origins=(), login_template: str | Path | None = None,
                    logout_template: str | Path | None = None,
                    dask: str | None = None) -> list[str]:
    """The arguments of ``panel serve`` (after ``panel``) for ``host``: loopback without a
    login, any other host only with ``auth_file`` (Panel's ``--basic-auth`` JSON file) and,
    if given, the login and logout pages to show (:func:`write_offline_templates`); the app's
    own ``--data`` and ``--dask ADDRESS`` (a Dask scheduler, or ``local``) after ``--args``."""
    if not is_loopback(host) and auth_file is None:
        raise ValueError(f"serving on {host!r} reaches other machines: it needs a password "
                         "(use room(), or python app/serve.py --host HOST)")
    arguments = ["serve", str(APP_DIR), "--address", host, "--port", str(port)]
    for origin in origins(host, port, share, extra_origins):
        arguments += ["--allow-websocket-origin", origin]
    if auth_file is not None:
        arguments += ["--basic-auth", str(auth_file)]
        if login_template is not None:
            arguments += ["--basic-login-template", str(login_template)]
        if logout_template is not None:
            arguments += ["--logout-template", str(logout_template)]
    app_arguments = [] if data is None else ["--data", str(data)]
    if dask is not None:
        app_arguments += ["--dask", dask]
    if app_arguments:
        arguments += ["--args", *app_arguments]
    return arguments


def panel_command() -> list[str]:
    panel = Path(sys.executable).with_name("panel")
    return [str(panel)] if panel.exists() else [sys.executable, "-m", "panel"]


@dataclass
class Serving:
    """What to run and what to tell: the ``panel serve`` command, its environment, the URL to
    open or share, and (in a room) the login."""

    command: list[str]
    env: dict[str, str]
    url: str
    user: str | None = None
    password: str | None = None
    directory: Path | None = None  # holds the password file; removed by close()

    def describe(self) -> str:
        if self.password is None:
            return (f"Sophon Explorer, on this machine only: open {self.url}\n"
                    "(a workshop room for other machines: make app HOST=0.0.0.0)")
        return "\n".join([
            "Sophon Explorer workshop room",
            f"  share:    {self.url}",
            f"  user:     {self.user}",
            f"  password: {self.password}",
            "Anyone who can reach this address and has the password can use the app. Plain HTTP:",
            "the password crosses the network unencrypted; use it on a network you trust.",
        ])

    def close(self) -> None:
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None


def _environment(**changes: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PANEL_BASIC_AUTH", "PANEL_COOKIE_SECRET", "BOKEH_COOKIE_SECRET",
                        "BOKEH_ALLOW_WS_ORIGIN")}  # these would widen or clash with our options
    env.update(changes)
    return env


def local(host: str = LOOPBACK, port: int = DEFAULT_PORT, data: str | None = None, *,
          dask: str | None = None) -> Serving:
    """This machine only."""
    name = "localhost" if host in ("localhost", LOOPBACK) else host
    return Serving(command=[*panel_command(), *panel_arguments(host, port, data, dask=dask)],
                   env=_environment(), url=f"http://{_netloc(name, port)}/app")


def room(host: str = "0.0.0.0", port: int = DEFAULT_PORT, data: str | None = None, *,
         password: str | None = None, user: str = ROOM_USER, share: str | None = None,
         extra_origins=(), directory: str | Path | None = None,
         dask: str | None = None) -> Serving:
    """A workshop room on ``host``: a generated password (or ``password``) in a file only this
    user may read, a generated cookie secret, origins limited to the shared address, and login
    and logout pages that need no internet."""
    if share is None:
        share = machine_address() if host in WILDCARDS else host
    password = password or secrets.token_urlsafe(9)
    folder = Path(tempfile.mkdtemp(prefix="sophon-room-", dir=directory))  # mode 0700
    auth_file = folder / "basic-auth.json"
    descriptor = os.open(auth_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        json.dump({user: password}, handle)
    login_template, logout_template = write_offline_templates(folder)
    arguments = panel_arguments(host, port, data, auth_file=auth_file, share=share,
                                extra_origins=extra_origins, login_template=login_template,
                                logout_template=logout_template, dask=dask)
    return Serving(command=[*panel_command(), *arguments],
                   env=_environment(PANEL_COOKIE_SECRET=secrets.token_urlsafe(32)),
                   url=f"http://{_netloc(share, port)}/app", user=user, password=password,
                   directory=folder)


def main(argv=None, prog: str = "python app/serve.py") -> int:  # prog: `sophon serve` too
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default=LOOPBACK,
                        help="address to listen on (default 127.0.0.1: this machine only; "
                             "0.0.0.0 or an address of this machine: a workshop room)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--data", default=None, help="the dataset (default data/default)")
    parser.add_argument("--origin", action="append", default=[],
                        help="in a room, one more name participants open the page by "
                             "(e.g. the machine's host name); repeatable")
    parser.add_argument("--user", default=ROOM_USER, help="in a room, the login name")
    parser.add_argument("--dask", nargs="?", const="local", default=None, metavar="ADDRESS",
                        help="scan the dataset on the Dask cluster at ADDRESS (e.g. "
                             "tcp://scheduler:8786; alone or 'local': a LocalCluster of this "
                             "machine's cores) instead of loading it in memory")
    args = parser.parse_args(argv)
    if args.data:  # relative to the caller's folder, not to the server's (ROOT)
        args.data = str(Path(args.data).expanduser().absolute())
    if is_loopback(args.host):
        serving = local(args.host, args.port, args.data, dask=args.dask)
    else:
        serving = room(args.host, args.port, args.data, user=args.user,
                       password=os.environ.get(PASSWORD_VARIABLE) or None,
                       extra_origins=[o for o in args.origin if o], dask=args.dask)
    print(serving.describe(), flush=True)
    try:
        process = subprocess.Popen(serving.command, env=serving.env, cwd=ROOT)
        for name in ("SIGTERM", "SIGHUP"):  # stop panel too, then clean up (finally)
            if hasattr(signal, name):
                signal.signal(getattr(signal, name), lambda *_: process.terminate())
        try:
            return process.wait()
        except KeyboardInterrupt:  # Ctrl-C reaches panel too; give it a moment to stop
            try:
                return process.wait(timeout=10)
            except (subprocess.TimeoutExpired, KeyboardInterrupt):
                process.send_signal(signal.SIGKILL)
                return process.wait()
    finally:
        serving.close()


if __name__ == "__main__":
    sys.exit(main())
