"""``data_manifest.yaml``: every shipped dataset and model with its size, sha256 and provenance.

Loading a shipped file through :func:`verify` checks that it is there and unaltered, and says
clearly which file is missing or changed and how it was produced.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import yaml

__all__ = ["ManifestError", "ManifestEntry", "load_manifest", "sha256_file", "verify",
           "verify_path", "REPOSITORY_ROOT", "DEFAULT_MANIFEST", "DEFAULT_DATASET"]

REPOSITORY_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MANIFEST = REPOSITORY_ROOT / "data_manifest.yaml"
# the embedded default dataset: the scored SM collision sample the app opens unless told otherwise
DEFAULT_DATASET = REPOSITORY_ROOT / "data" / "default"


class ManifestError(ValueError):
    """A shipped file is missing or altered, or the manifest itself is malformed."""


@dataclass(frozen=True)
class ManifestEntry:
    """One shipped file: ``path`` relative to the repository root, ``size`` in bytes."""

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


def verify(entry: ManifestEntry, root: str | os.PathLike = REPOSITORY_ROOT) -> Path:
    """The file of ``entry`` after checking its size and sha256; ManifestError if not right."""
    file = Path(root) / entry.path
    made_by = f" (made by: {entry.command})" if entry.command else ""
    if not file.is_file():
        raise ManifestError(f"{entry.path}: listed in data_manifest.yaml as {entry.name!r} but "
                            f"missing{made_by}")
    size = file.stat().st_size
    if size != entry.size:
        raise ManifestError(f"{entry.path}: altered: {size} bytes, the manifest says {entry.size}"
                            f"{made_by}")
    digest = sha256_file(file)
    if digest != entry.sha256:
        raise ManifestError(f"{entry.path}: altered: sha256 {digest[:12]}..., the manifest says "
                            f"{entry.sha256[:12]}...{made_by}")
    return file


def verify_path(path: str | os.PathLike, manifest: str | os.PathLike = DEFAULT_MANIFEST,
                root: str | os.PathLike = REPOSITORY_ROOT) -> list[Path]:
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
