"""Sophon Explorer's Panel app: ``panel serve app`` (see :mod:`app.main`).

The views are reusable :class:`panel.viewable.Viewer` components that notebooks can show inline::

    from app import Explorer
    from app.views import SpectrumView
    explorer = Explorer.from_path("data/default")
    SpectrumView(explorer=explorer)
"""

from app.explorer import Explorer

__all__ = ["Explorer"]
