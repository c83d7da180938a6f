"""The app's views, each a :class:`panel.viewable.Viewer` over a shared
:class:`~app.explorer.Explorer` (one per session), usable inline in notebooks::

    from app import Explorer
    from app.views import ComposerView, SpectrumView
    explorer = Explorer.from_path("jets.parquet")
    ComposerView(explorer)   # change the discriminant here...
    SpectrumView(explorer)   # ...and the spectra follow

Views are imported on first use (the latent view pulls in datashader, which the first page of
the app does not need).
"""

from importlib import import_module

__all__ = ["ComposerView", "SpectrumView", "SignificanceView", "EventView", "LatentView",
           "SelectionTable", "JetDetailView", "RescoringView", "LearningView"]

_MODULES = {
    "ComposerView": "app.views.composer",
    "SpectrumView": "app.views.spectrum",
    "SignificanceView": "app.views.significance",
    "EventView": "app.views.events",
    "LatentView": "app.views.latent",
    "SelectionTable": "app.views.latent",
    "JetDetailView": "app.views.jet_detail",
    "RescoringView": "app.views.rescoring",
    "LearningView": "app.views.learning",
}


def __getattr__(name: str):
    if name in _MODULES:
        return getattr(import_module(_MODULES[name]), name)
    raise AttributeError(f"module 'app.views' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
