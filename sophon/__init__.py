"""Sophon Explorer: the library behind the app.

Modules: :mod:`sophon.labels` (the 188 classes and class-set queries), :mod:`sophon.discriminant`,
:mod:`sophon.store` (the jet dataset), :mod:`sophon.spectrum` (efficiency scans, histograms,
significance), :mod:`sophon.model`, :mod:`sophon.features`, :mod:`sophon.scorers`, :mod:`sophon.scoring`,
:mod:`sophon.generate`, and the ``sophon`` command line (:mod:`sophon.cli`).
"""

__version__ = "0.1.0"
