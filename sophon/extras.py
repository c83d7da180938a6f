"""Optional parts of the package and the error that names what is missing.

The core (datasets, discriminants, spectra, scoring with torch, the app) installs with
``pip install sophon-explorer``; the rest are extras of ``pyproject.toml``:

- ``generate``: event generation (:mod:`sophon.generate`) with Pythia 8 and FastJet;
- ``onnx``: ONNX export (:mod:`sophon.export`) and ONNX scoring
  (:class:`sophon.scorers.OnnxScorer`);
- ``embed``: the UMAP of the latent space (:mod:`sophon.embedding`, ``sophon embed``);
- ``root``: ROOT files with uproot (Delphes input, :mod:`sophon.delphes`; histograms,
  :mod:`sophon.histograms`);
- ``figures``: publication figures (:mod:`sophon.figures`: matplotlib, in mplhep's style when
  mplhep is there);
- ``anomaly``: the weakly supervised searches on the latents (:mod:`sophon.anomaly`:
  scikit-learn's gradient boosting).

A module of an extra is imported inside the function that needs it, through :func:`require` (or
checked with :func:`require_all`), so that a missing one raises :class:`MissingExtraError` naming
the modules, what needs them and the command that installs them, instead of a bare
``ModuleNotFoundError``. tests/test_dependencies.py checks these against pyproject.toml.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

__all__ = ["DISTRIBUTION", "EXTRAS", "MissingExtraError", "has_extra", "install_command", "require",
           "require_all"]

#: the name of the distribution on the package index
DISTRIBUTION = "sophon-explorer"

#: extra -> the modules it brings (import names)
EXTRAS: dict[str, tuple[str, ...]] = {
    "generate": ("pythia8mc", "fastjet", "numba"),
    "onnx": ("onnx", "onnxruntime"),
    "embed": ("umap",),
    "root": ("uproot",),
    "figures": ("matplotlib", "mplhep"),
    "anomaly": ("sklearn", "threadpoolctl"),
    "dask": ("dask", "distributed"),
    # weaver-core's ParticleTransformer, the reference the model tests compare against
    # (sophon.oracle; install with --no-deps)
    "oracle": ("weaver",),
}


def install_command(extra: str) -> str:
    """The pip command that installs ``extra``."""
    return f"pip install '{DISTRIBUTION}[{extra}]'"


class MissingExtraError(ModuleNotFoundError):
    """A module of an optional extra is not installed. ``name`` is the first missing module,
    ``missing`` all of them, ``extra`` the extra that installs them."""

    def __init__(self, purpose: str, extra: str, missing: tuple[str, ...]):
        self.purpose, self.extra, self.missing = purpose, extra, tuple(missing)
        super().__init__(f"{purpose} needs {' and '.join(self.missing)}, which "
                         f"{'is' if len(self.missing) == 1 else 'are'} not installed: "
                         f"{install_command(extra)}", name=self.missing[0])


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a broken parent package, or a module without a spec
        return False


def has_extra(extra: str) -> bool:
    """Whether every module of ``extra`` is installed (none is imported): for a faster path that
    has a plain fallback."""
    return all(_installed(module) for module in EXTRAS[extra])


def require_all(extra: str, purpose: str, modules: tuple[str, ...] | None = None) -> None:
    """Check that every module of ``extra`` (or only ``modules``, some of them: those
    ``purpose`` cannot do without) is installed, without importing them;
    :class:`MissingExtraError` naming the missing ones otherwise."""
    needed = EXTRAS[extra] if modules is None else tuple(modules)
    strangers = [module for module in needed if module not in EXTRAS[extra]]
    if strangers:
        raise ValueError(f"{strangers[0]!r} is not a module of the {extra!r} extra")
    missing = tuple(module for module in needed if not _installed(module))
    if missing:
        raise MissingExtraError(purpose, extra, missing)


def require(module: str, extra: str, purpose: str) -> ModuleType:
    """``import module``, one of ``extra``'s; :class:`MissingExtraError` when it is not
    installed (any other import failure of an installed module propagates unchanged)."""
    if module not in EXTRAS[extra]:
        raise ValueError(f"{module!r} is not a module of the {extra!r} extra")
    if not _installed(module):
        raise MissingExtraError(purpose, extra, (module,))
    return importlib.import_module(module)
