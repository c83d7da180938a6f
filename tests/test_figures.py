"""Publication figures (sophon.figures): files written in each format, non-empty, a PNG of the
expected pixel size (read from its header), with and without mplhep."""

from __future__ import annotations

import struct

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from sophon import figures  # noqa: E402
from sophon.discriminant import PRESETS  # noqa: E402
from sophon.spectrum import EfficiencyScan, MassBinning  # noqa: E402


@pytest.fixture(scope="module")
def scan():
    rng = np.random.default_rng(5)
    n = 20_000
    process = rng.choice(3, size=n, p=[0.85, 0.1, 0.05])
    mass = np.where(process == 1, rng.normal(80, 8, n), rng.exponential(70, n))
    value = (rng.normal(size=n) + 2 * (process == 1)).astype(np.float32)
    weight = rng.exponential(size=n) * np.where(process == 0, 20.0, 1.0)
    binning = MassBinning(50, 0, 500)
    return EfficiencyScan.build(value, binning.index(mass), weight, process,
                                ["QCD", "W+jets", "ttbar"], binning=binning)


def _png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_one_call_writes_pdf_png_and_svg(scan, tmp_path):
    paths = [tmp_path / "spectrum.pdf", tmp_path / "spectrum.png", tmp_path / "spectrum.svg"]
    written = figures.save_spectrum_figure(scan, 6, paths, dpi=100, figsize=(10.0, 4.0),
                                           discriminant=PRESETS["A1: X->cs"], luminosity_fb=138,
                                           reference="QCD jets")
    assert written == paths
    assert all(path.stat().st_size > 5_000 for path in paths)
    assert paths[0].read_bytes().startswith(b"%PDF")
    svg = paths[2].read_text()
    assert "<svg" in svg[:1000]
    assert _png_size(paths[1]) == (1000, 400)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in paths)


def test_figure_holds_the_label_formula_and_every_level(scan):
    figure = figures.spectrum_figure(scan, 2, discriminant=PRESETS["A1: X->cs"],
                                     luminosity_fb=138)
    left, right = figure.axes
    texts = " ".join(t.get_text() for ax in figure.axes for t in ax.texts)
    assert "Simulation" in texts and "138" in texts and "g_A" in texts
    # one line per efficiency level on the left, one filled step per process on the right
    labels = left.get_legend_handles_labels()[1]
    assert len(labels) == scan.n_levels
    assert {"QCD", "W+jets", "ttbar"} <= set(right.get_legend_handles_labels()[1])
    assert left.get_yscale() == "log"


def test_drawn_steps_are_the_scan_rebinned(scan):
    figure = figures.spectrum_figure(scan, 3, rebin=5)
    left, right = figure.axes
    chosen = [patch for patch in left.patches if patch.get_linewidth() > 2]
    assert len(chosen) == 1
    values, edges, _ = chosen[0].get_data()
    np.testing.assert_allclose(edges, np.linspace(0, 500, 11))
    np.testing.assert_allclose(values, scan.spectrum(3).reshape(10, 5).sum(axis=1))
    # the outline of the stack is the total at the level
    outline = [patch for patch in right.patches if not patch.get_fill()]
    np.testing.assert_allclose(outline[0].get_data()[0], values)
    with pytest.raises(ValueError, match="rebin 7"):
        figures.spectrum_figure(scan, 3, rebin=7)


def test_plain_matplotlib_style_without_mplhep(scan, tmp_path, monkeypatch):
    monkeypatch.setattr(figures, "_mplhep", lambda: None)
    path = figures.save_spectrum_figure(scan, 0, tmp_path / "plain.png", dpi=50,
                                        normalise=True, log=False)[0]
    assert _png_size(path) == (600, 275)  # the default 12 x 5.5 inches
    figure = figures.spectrum_figure(scan, 0)
    assert any("Simulation" in t.get_text() for t in figure.axes[0].texts)


def test_bad_format_and_level_are_refused(scan, tmp_path):
    with pytest.raises(ValueError, match=r"spectrum\.jpg: unknown figure format"):
        figures.save_spectrum_figure(scan, 0, tmp_path / "spectrum.jpg")
    with pytest.raises(ValueError, match="level 99"):
        figures.spectrum_figure(scan, 99)
    assert list(tmp_path.iterdir()) == []


def _epoch(epoch: int, loss: float, passing: dict[str, int], best: bool = False) -> dict:
    tagging = {preset: {"qcd_jets": 8000, "60%": {"qcd_passing": n, "rejection": 8000 / max(n, 1),
                                                  "qcd_efficiency": n / 8000}}
               for preset, n in passing.items()}
    return {"epoch": epoch, "loss": loss, "validation_loss": loss - 0.1, "tagging": tagging,
            "best": best}


def test_learning_curves_show_both_losses_and_each_presets_rejection(tmp_path):
    history = [_epoch(1, 3.0, {"A1": 80, "A2": 20}), _epoch(2, 2.5, {"A1": 40, "A2": 8}, True),
               _epoch(3, 2.4, {"A1": 50, "A2": 0})]
    figure = figures.learning_curves_figure(history)
    losses, rejections = figure.axes
    np.testing.assert_allclose(losses.lines[0].get_ydata(), [3.0, 2.5, 2.4])
    np.testing.assert_allclose(losses.lines[1].get_ydata(), [2.9, 2.4, 2.3])
    drawn = {bars.get_label(): bars.lines[0].get_ydata() for bars in rejections.containers}
    # rejection = QCD jets / passing QCD jets; none passing is bounded by one jet
    np.testing.assert_allclose(drawn["A1"], [100.0, 200.0, 160.0])
    np.testing.assert_allclose(drawn["A2"], [400.0, 1000.0, 8000.0])
    assert rejections.get_yscale() == "log"
    assert any("best epoch (2)" in text.get_text() for text in rejections.get_legend().get_texts())
    figures.save_figure(figure, tmp_path / "curves.png")
    assert (tmp_path / "curves.png").stat().st_size > 10_000
