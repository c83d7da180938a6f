"""Imported once by the forkserver that starts generation workers (see ``driver._context``).

Workers are forked from that server, so whatever is loaded here is loaded once for all of them:
Pythia, FastJet (with its banner silenced) and the compiled soft-drop kernel. Failures are
ignored; the workers then simply load things themselves.
"""

try:  # pragma: no cover - runs in the forkserver process
    import numpy as _np
    import pythia8mc as _pythia8mc  # noqa: F401

    from sophon.generate import pipeline as _pipeline  # noqa: F401
    from sophon.generate.jets import _fastjet, softdrop_masses

    _fastjet()
    softdrop_masses(_np.array([0, 2]), _np.array([1.0, 2.0]), _np.array([0.0, 1.0]),
                    _np.array([1.0, 1.0]), _np.array([3.0, 3.0]))
except Exception:  # noqa: BLE001 - a warm-up must never break the pool
    pass
