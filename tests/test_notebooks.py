"""The workshop notebooks (``notebooks/*.ipynb``).

They are committed without outputs, and each runs top to bottom headless with nbclient, in a
kernel on this interpreter (the project's venv), on the embedded default dataset or, until that
lands, on the synthetic stand-in that ``notebooks/_workshop.py`` writes (the model notebook then
generates a handful of jets and uses a model with random weights). Every set-up draws the views
with their JavaScript and CSS inline (tests/test_notebooks_offline_browser.py renders the
executed notebooks with the network cut off).
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
# In the order of the workshop (and of the README).
WORKSHOP = (
    "01_quick_start.ipynb",
    "02_designing_discriminants.ipynb",
    "03_latent_space.ipynb",
    "04_the_model.ipynb",
    "05_exercises.ipynb",
    "05_exercises_solutions.ipynb",
    "06_files_and_figures.ipynb",
    "07_transfer_learning.ipynb",
    "08_anomaly_search.ipynb",
)
KERNEL_NAME = "sophon-workshop"
CELL_TIMEOUT_S = 300  # one cell; a whole notebook takes seconds to tens of seconds
NOTEBOOK_BUDGET_S = 120  # a notebook that takes longer than this has grown too heavy for CI


def _read(name: str):
    return nbformat.read(NOTEBOOKS / name, as_version=4)


def test_the_workshop_notebooks_are_all_there():
    assert sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")) == sorted(WORKSHOP)
    assert (NOTEBOOKS / "_workshop.py").is_file()


@pytest.mark.parametrize("name", WORKSHOP)
def test_committed_notebook_has_no_outputs(name):
    notebook = _read(name)
    nbformat.validate(notebook)
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type != "code":
            continue
        assert cell.outputs == [], (f"{name}: cell {index} is committed with outputs; clear "
                                    "them (e.g. `jupyter nbconvert --clear-output --inplace`)")
        assert cell.execution_count is None, f"{name}: cell {index} has an execution count"
    assert "widgets" not in notebook.metadata, f"{name}: widget state is committed"


@pytest.mark.parametrize("name", WORKSHOP)
def test_notebook_uses_the_shared_set_up(name):
    """Every notebook opens its data through notebooks/_workshop.py, in its first code cell."""
    first = next(c for c in _read(name).cells if c.cell_type == "code")
    assert "import _workshop" in first.source
    assert "pn.extension(" in first.source


@pytest.fixture(scope="session")
def kernel_spec_dir(tmp_path_factory) -> Path:
    """A kernelspec that starts ipykernel on this very interpreter, whatever other kernels are
    installed (a fresh CI clone has only .venv)."""
    directory = tmp_path_factory.mktemp("kernels")
    spec = directory / KERNEL_NAME
    spec.mkdir()
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Sophon workshop (test)", "language": "python"}))
    return directory


#: Each notebook executed once per test process: name -> (notebook with outputs, seconds).
_EXECUTED: dict[str, tuple] = {}


def execute_notebook(name: str, kernel_spec_dir: Path):
    """``(notebook, seconds)``: ``name`` run top to bottom headless with nbclient, in a kernel
    on this interpreter, once per test process (tests/test_notebooks_offline_browser.py renders
    the same outputs). Raises CellExecutionError, with the cell and its traceback, on failure."""
    if name in _EXECUTED:
        return _EXECUTED[name]
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    notebook = _read(name)
    manager = KernelManager(kernel_name=KERNEL_NAME,
                            kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(kernel_spec_dir)]))
    client = nbclient.NotebookClient(notebook, km=manager, timeout=CELL_TIMEOUT_S,
                                     resources={"metadata": {"path": str(NOTEBOOKS)}})
    start = time.perf_counter()
    try:
        client.execute()
    finally:
        # nbclient leaves a kernel it was handed running: stop it gracefully, so that the
        # notebook's temporary files are removed at the kernel's exit
        if manager.has_kernel:
            manager.shutdown_kernel(now=False)
    _EXECUTED[name] = (notebook, time.perf_counter() - start)
    return _EXECUTED[name]


@pytest.mark.slow
@pytest.mark.parametrize("name", WORKSHOP)
def test_notebook_runs_top_to_bottom(name, kernel_spec_dir):
    notebook, seconds = execute_notebook(name, kernel_spec_dir)
    assert seconds < NOTEBOOK_BUDGET_S, f"{name} took {seconds:.0f} s"
    errors = [output for cell in notebook.cells if cell.cell_type == "code"
              for output in cell.outputs if output.output_type == "error"]
    assert not errors


@pytest.mark.parametrize("name", WORKSHOP)
def test_views_are_drawn_offline(name):
    """The set-up asks Panel to carry Bokeh's and Panel's JavaScript and CSS inside the notebook
    (``inline=True``): without it every view is blank in a room without network."""
    first = next(c for c in _read(name).cells if c.cell_type == "code")
    assert re.search(r"pn\.extension\([^)]*inline=True", first.source), first.source
