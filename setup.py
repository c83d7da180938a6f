"""Build hooks of the wheel; everything else is in pyproject.toml.

The wheel carries the embedded default, so that ``pip install sophon-explorer && sophon serve``
works outside the repository: ``data_manifest.yaml`` and every dataset and model it lists (plus
each model's card and history, ``<model>.md`` and ``<model>.json``) are copied into the package,
under ``sophon/_shipped/`` with their relative paths, where :func:`sophon.manifest.shipped_root`
finds them. Each listed file is checked against its size and sha256 first: a wheel never ships a
file that the app would then refuse (a checkpoint that a running training rewrites in place, say).

Setuptools' intermediate files go to ``.setuptools-build/``, not to its default ``build/``, which
is the project's own work folder (``make default``, ``make model``).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

SOURCE = Path(__file__).resolve().parent
PACKAGE_FOLDER = "_shipped"  # inside sophon/; sophon.manifest.PACKAGED_ROOT
MODEL_COMPANIONS = (".md", ".json")  # a model's card and training history, beside it


def shipped_files(root: Path) -> list[str]:
    """The files under ``root`` the wheel ships, relative to it: the manifest, its datasets and
    models (verified: sophon.manifest.ManifestError names a missing or altered one), and each
    model's companions that exist."""
    sys.path.insert(0, str(root))
    try:
        from sophon.manifest import load_manifest, verify
    finally:
        sys.path.remove(str(root))
    files = ["data_manifest.yaml"]
    for entry in load_manifest(root / "data_manifest.yaml"):
        verify(entry, root)
        files.append(entry.path)
        if entry.kind == "model":
            stem = Path(entry.path).with_suffix("")
            files += [str(stem.with_suffix(s)) for s in MODEL_COMPANIONS
                      if (root / stem.with_suffix(s)).is_file()]
    return files


class BuildWithShippedData(build_py):
    """``build_py`` that also copies the shipped files into ``sophon/_shipped`` (not for an
    editable install: the checkout has them in place)."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        target = Path(self.build_lib) / "sophon" / PACKAGE_FOLDER
        for relative in shipped_files(SOURCE):
            destination = target / relative
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(SOURCE / relative, destination)


setup(cmdclass={"build_py": BuildWithShippedData},
      options={"build": {"build_base": ".setuptools-build"}})
