"""``data_manifest.yaml``: every shipped dataset and model with its size, sha256 and provenance.

Loading a shipped file through :func:`verify` checks that it is there and unaltered, and says
clearly which file is missing or changed and how it was produced. :func:`verify_listed` is the
store's check (:class:`sophon.store.JetDataset` runs it on every file it opens): a file the manifest
lists is verified, anything else passes. A file's digest is computed once per process for each
(path, inode, size, mtime): a file modified less than :data:`RACY_SECONDS` ago is hashed again on
every load, since a same-size change within the file system's timestamp granularity would keep
the same mtime.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

__all__ = ["ManifestError", "ManifestEntry", "load_manifest", "sha256_file", "verify",
           "verify_path", "verify_listed", "record", "register_cli", "shipped_root", "PACKAGED_ROOT", "SHIPPED_ROOT",
           "REPOSITORY_ROOT", "DEFAULT_MANIFEST", "DEFAULT_DATASET", "DEFAULT_MODELS"]

#: where an installed wheel keeps the shipped files (setup.py copies ``data_manifest.yaml`` and
#: the files it lists there, under the same relative paths)
PACKAGED_ROOT = Path(__file__).resolve().parent / "_shipped"


def shipped_root() -> Path:
    """The folder that holds ``data_manifest.yaml`` and the ``data/`` it lists: the package's
    own copy in an installed wheel (:data:`PACKAGED_ROOT`), else the repository root of the
    checkout this module lies in. The one place that decides where the shipped files are."""
    if (PACKAGED_ROOT / "data_manifest.yaml").is_file():
        return PACKAGED_ROOT
    return Path(__file__).resolve().parents[1]


#: the shipped root (:func:`shipped_root`): the repository root in a checkout, the package's
#: ``_shipped`` folder in an installed wheel; manifest paths are relative to it
SHIPPED_ROOT = shipped_root()
#: the name this folder had when it could only be a checkout (the same path)
REPOSITORY_ROOT = SHIPPED_ROOT
DEFAULT_MANIFEST = SHIPPED_ROOT / "data_manifest.yaml"
# the embedded default dataset: the scored SM collision sample the app opens unless told otherwise
DEFAULT_DATASET = SHIPPED_ROOT / "data" / "default"
# the shipped models (the app's rescoring reads models from this folder unless told otherwise)
DEFAULT_MODELS = SHIPPED_ROOT / "data" / "models"
# A file modified more recently than this is not trusted from the digest cache (see the docstring).
RACY_SECONDS = 2.0
_LOCK = threading.Lock()
# (resolved file, inode, size, mtime_ns, expected sha256) of files whose digest matched
_VERIFIED: set[tuple] = set()
# manifest path -> ((size, mtime_ns), entries)
_MANIFESTS: dict[Path, tuple[tuple[int, int], list]] = {}


class ManifestError(ValueError):
    """A shipped file is missing or altered, or the manifest itself is malformed."""


@dataclass(frozen=True)
class ManifestEntry:
    """One shipped file: ``path`` relative to the shipped root (:data:`SHIPPED_ROOT`), ``size``
    in bytes."""

    name: str
    kind: str
    path: str
    size: int
    sha256: str
    command: str = ""
    seed: int | None = None
    schema_version: int | None = None


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def load_manifest(path: str | os.PathLike = DEFAULT_MANIFEST) -> list[ManifestEntry]:
    """The project's shipped entries (datasets and models) of a manifest file."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise ManifestError(f"{path}: cannot read the manifest ({error})") from None
    project = (raw or {}).get("project") or {}
    entries = []
    for kind in ("datasets", "models"):
        for item in project.get(kind) or []:
            try:
                entries.append(ManifestEntry(
                    name=str(item["name"]), kind=kind[:-1], path=str(item["path"]),
                    size=int(item["size"]), sha256=str(item["sha256"]),
                    command=str(item.get("command", "")), seed=item.get("seed"),
                    schema_version=item.get("schema_version")))
            except (KeyError, TypeError, ValueError) as error:
                raise ManifestError(f"{path}: malformed {kind} entry {item!r} ({error})") from None
    return entries


def verify(entry: ManifestEntry, root: str | os.PathLike = SHIPPED_ROOT) -> Path:
    """The file of ``entry`` after checking its size and sha256; ManifestError if not right."""
    file = Path(root) / entry.path
    made_by = f" (made by: {entry.command})" if entry.command else ""
    if not file.is_file():
        raise ManifestError(f"{entry.path}: listed in data_manifest.yaml as {entry.name!r} but "
                            f"missing{made_by}")
    status = file.stat()
    if status.st_size != entry.size:
        raise ManifestError(f"{entry.path}: altered: {status.st_size} bytes, the manifest says "
                            f"{entry.size}{made_by}")
    key = (file.resolve(), status.st_ino, status.st_size, status.st_mtime_ns, entry.sha256)
    with _LOCK:
        if key in _VERIFIED:
            return file
    digest = sha256_file(file)
    if digest != entry.sha256:
        raise ManifestError(f"{entry.path}: altered: sha256 {digest[:12]}..., the manifest says "
                            f"{entry.sha256[:12]}...{made_by}")
    if time.time() - status.st_mtime_ns / 1e9 > RACY_SECONDS:
        with _LOCK:
            _VERIFIED.add(key)
    return file


def _cached_manifest(manifest: Path) -> list[ManifestEntry]:
    try:
        status = manifest.stat()
    except OSError:
        return load_manifest(manifest)  # says why it cannot be read
    stamp = (status.st_size, status.st_mtime_ns)
    with _LOCK:
        cached = _MANIFESTS.get(manifest)
    if cached is not None and cached[0] == stamp and time.time() - stamp[1] / 1e9 > RACY_SECONDS:
        return cached[1]
    entries = load_manifest(manifest)
    with _LOCK:
        _MANIFESTS[manifest] = (stamp, entries)
    return entries


def verify_listed(path: str | os.PathLike, manifest: str | os.PathLike | None = None,
                  root: str | os.PathLike | None = None) -> bool:
    """Verify ``path`` if the manifest lists it (by its resolved path under ``root``'s ``data/``
    folder); True when it was verified, False when the manifest does not list it (a user's own
    file). ManifestError names the file and the expected and actual size or digest.

    ``manifest`` and ``root`` default to the shipped ones, read when called (so a test may point
    them at a temporary manifest). Cheap: a file outside ``root/data`` reads no manifest, and a
    listed file is hashed once per (path, inode, size, mtime)."""
    root = Path(SHIPPED_ROOT if root is None else root).resolve()
    manifest = Path(DEFAULT_MANIFEST if manifest is None else manifest)
    target = Path(path).resolve()
    if root / "data" not in target.parents:
        return False
    for entry in _cached_manifest(manifest):
        if (root / entry.path).resolve() == target:
            verify(entry, root)
            return True
    return False


def verify_path(path: str | os.PathLike, manifest: str | os.PathLike = DEFAULT_MANIFEST,
                root: str | os.PathLike = SHIPPED_ROOT) -> list[Path]:
    """Verify every manifest entry at or below ``path`` (a shipped file or directory).

    Returns the verified files; an empty list when the manifest lists nothing there (a user's own
    data, which has no checksum to compare against).
    """
    target = Path(path).resolve()
    checked = []
    for entry in load_manifest(manifest):
        file = (Path(root) / entry.path).resolve()
        if file == target or target in file.parents:
            checked.append(verify(entry, root))
    return checked


def record(path: str | os.PathLike, manifest: str | os.PathLike = DEFAULT_MANIFEST,
           root: str | os.PathLike = SHIPPED_ROOT) -> ManifestEntry | None:
    """Write the size and sha256 of the rebuilt shipped file ``path`` into its manifest entry
    (the rebuild recipes, ``make default`` and ``make model``, call it after each step that
    rewrites a shipped file, since loading verifies it). Only the entry's ``size:`` and
    ``sha256:`` lines change: comments, descriptions and commands stay as written. Returns the
    updated entry, or None when the manifest does not list ``path`` (a file it need not know)."""
    from sophon.atomic import atomic_output

    manifest, root, target = Path(manifest), Path(root).resolve(), Path(path).resolve()
    entry = next((e for e in load_manifest(manifest) if (root / e.path).resolve() == target),
                 None)
    if entry is None:
        return None
    lines = manifest.read_text().splitlines(keepends=True)
    path_line = next(i for i, line in enumerate(lines)
                     if re.fullmatch(rf"\s*-?\s*path:\s*{re.escape(entry.path)}\s*", line))
    entry_starts = [i for i, line in enumerate(lines) if re.match(r"\s*-\s", line)]
    first = max((i for i in entry_starts if i <= path_line), default=path_line)
    last = min((i for i in entry_starts if i > path_line), default=len(lines))
    size, digest = target.stat().st_size, sha256_file(target)
    values = {"size": str(size), "sha256": digest}
    found = []
    for i in range(first, last):
        match = re.match(r"(\s*-?\s*)(size|sha256):", lines[i])
        if match:
            lines[i] = f"{match.group(1)}{match.group(2)}: {values[match.group(2)]}\n"
            found.append(match.group(2))
    if sorted(found) != ["sha256", "size"]:
        raise ManifestError(f"{manifest}: the entry of {entry.path} has no single size and "
                            f"sha256 line to update (found {found})")
    with atomic_output(manifest) as temporary:
        temporary.write_text("".join(lines))
    return next(e for e in load_manifest(manifest) if e.path == entry.path)


def _main(args: argparse.Namespace) -> int:
    for path in args.paths:
        entry = record(path)
        if entry is None:
            print(f"{path}: not listed in {DEFAULT_MANIFEST.name}; nothing recorded")
        else:
            print(f"{path}: recorded {entry.size} bytes, sha256 {entry.sha256[:12]}... in "
                  f"{DEFAULT_MANIFEST.name} ({entry.name})")
    return 0


def register_cli(subparsers) -> None:
    parser = subparsers.add_parser(
        "manifest", help="record the size and sha256 of rebuilt shipped files in "
                         "data_manifest.yaml (the rebuild recipes run it)")
    parser.add_argument("action", choices=["record"], help="what to do")
    parser.add_argument("paths", nargs="+", type=Path, help="shipped files that were rebuilt")
    parser.set_defaults(handler=_main)
