"""The views as a physicist reads them, in a real browser (issue 14, items 7, 12 and 13):
`panel serve app` driven by Debian's chromium as a person drives it (click, drag, hover, read
the text, the axis and tick labels and the pixels of the page; the server's memory and disk).

- 7: rescoring offers no model that would reproduce the stored scores, always rescores the
  original dataset (names never grow), keeps one rescored dataset per session (the output
  folder and the server's memory do not grow with the clicks), and counts the jets it scores;
- 12: the log stack starts about 1e-3 below its highest bin, per-bin axes state the bin width,
  tick labels are readable (no ``2.500e+7``), the window lines are named, ε_B has a subscript,
  the significance defaults to the process the discriminant targets and names the background;
- 13: hovering the latent map names the jet's process (never "undefined"), "Clear selection"
  removes the drawn box, recolouring keeps it, and the table marks which jets carry
  constituents.

The served dataset is SYNTHETIC (test data, not physics): 40,000 jets, constituents stored for
400 of them (as the embedded default stores them for 2,000 of 67,130), Higgs weights a
millionth of the others (a sub-per-mille process), weights large enough for yields of 10^7 per
bin, and a model id naming the hash of a model file in the models folder (the one that "made
the stored scores"). Skipped (with the reason) when /usr/bin/chromium is absent, as in
tests/test_app_browser.py whose browser fixture, Server and text helpers these tests use.
"""

from __future__ import annotations

import functools

import io
import re
import time
from pathlib import Path

import numpy as np
import pytest

from sophon.labels import index_of, select
from sophon.manifest import sha256_file
from sophon.store import DatasetMetadata, write_dataset
from sophon.synthetic import make_synthetic

from test_app_browser import Server, browser, drag, eventually, latent_canvas_box  # noqa: F401
from test_app_views import random_constituent_columns

pytestmark = pytest.mark.browser

WAIT_S = 120.0  # the page answers in seconds; a loaded 2-core machine takes longer
_eventually = functools.partial(eventually, timeout=WAIT_S, poll=0.25)
PAGE_MS = 180_000  # a fresh server's first page on a loaded machine
N_JETS = 40_000
N_CARRYING = 400  # jets that store constituents
WEIGHT_SCALE = 1000.0  # yields of 10^6-10^7 per bin at the dataset's 100 fb^-1
HIGGS_SCALE = 1e-6  # Higgs: a millionth of its synthetic weight


# --- the served dataset and models ----------------------------------------------------------
def _tiny_model(path: Path, seed: int) -> Path:
    import torch

    from sophon.model import SophonModel, randomize_weights_, sophon_config

    model = SophonModel(sophon_config(embed_dims=(32, 128), pair_embed_dims=(8,), num_heads=4,
                                      num_layers=1, num_cls_layers=1, fc_params=((32, 0.0),)))
    randomize_weights_(model, seed=seed)
    torch.save(model.state_dict(), path)
    return path


def write_views_dataset(path: Path, stored_model: Path,
                        seed: int = 11) -> tuple[Path, np.ndarray, np.ndarray]:
    """The served SYNTHETIC dataset, the rows that carry constituents and how many each."""
    sample = make_synthetic(N_JETS, seed)
    rng = np.random.default_rng(seed)
    columns = dict(sample.columns)
    weight = columns["weight"] * WEIGHT_SCALE
    weight[columns["process"] == "Higgs"] *= HIGGS_SCALE
    columns["weight"] = weight
    lengths = np.zeros(len(weight), dtype=np.int64)
    # the most X->bb-like jets carry constituents (they head the latent table), and some others
    scores = sample.scores
    bb = scores[:, index_of("X_bb")]
    d = bb / (bb + scores[:, [index_of(c) for c in select("QCD")]].sum(axis=1))
    top = np.argsort(-d)[:6]
    others = rng.choice(np.setdiff1d(np.arange(len(weight)), top), N_CARRYING - len(top),
                        replace=False)
    carrying = np.sort(np.concatenate([top, others]))
    lengths[carrying] = rng.integers(3, 30, N_CARRYING)
    columns.update(random_constituent_columns(rng, lengths))
    model_id = f"{stored_model.name}@sha256:{sha256_file(stored_model)[:12]}"
    write_dataset(path, columns, scores=sample.scores, latents=sample.latents,
                  metadata=DatasetMetadata(luminosity_fb=100.0, model_id=model_id,
                                           extra={"synthetic": True}))
    return path, carrying, lengths


@pytest.fixture(scope="module")
def served(browser, tmp_path_factory):  # noqa: F811
    pytest.importorskip("torch")
    tmp = tmp_path_factory.mktemp("views")
    models = tmp / "models"
    models.mkdir()
    stored = _tiny_model(models / "stored.pt", seed=1)
    _tiny_model(models / "other-a.pt", seed=2)
    _tiny_model(models / "other-b.pt", seed=3)
    data, carrying, lengths = write_views_dataset(tmp / "jets.parquet", stored)
    server = Server(data, tmp)
    server.carrying, server.lengths = carrying, lengths
    server.data = data
    server.output = tmp / "output"
    yield server
    server.stop()


# --- reading the page -----------------------------------------------------------------------
def _open(browser, server, query: str = ""):  # noqa: F811
    page = browser.new_page(viewport={"width": 1500, "height": 1000})
    page.goto(server.url + query, timeout=PAGE_MS)
    page.wait_for_selector(".scan-summary", timeout=PAGE_MS)
    return page


def _text(page, selector: str) -> str:
    locator = page.locator(selector)
    return locator.first.inner_text() if locator.count() else ""


def _tab(page, title: str, inside: str) -> None:
    page.get_by_text(title, exact=True).click()
    page.wait_for_selector(inside, timeout=PAGE_MS)


#: The text an SVG-drawn figure shows, per figure: tick labels, axis labels, title, legend.
_FIGURE_TEXTS = """(root) => {
  const figures = [];
  const walk = (node, current) => {
    for (const child of node.children) {
      let here = current;
      if (child.classList && child.classList.contains('bk-Figure')) {
        here = []; figures.push(here);
      }
      const tag = child.tagName.toLowerCase();
      const label = child.classList && child.classList.contains('bk-label');  // HTML legends
      if (here !== null && (tag === 'text' || label)) {
        if (here[here.length - 1] !== child.textContent) here.push(child.textContent);
      }
      if (child.shadowRoot) walk(child.shadowRoot, here);
      walk(child, here);
    }
  };
  if (root.shadowRoot) walk(root.shadowRoot, null);
  walk(root, null);
  return figures;
}"""


def _figure_texts(page, container: str) -> list[list[str]]:
    """The texts of each Bokeh figure inside ``container`` (the figures must use the SVG
    backend, whose text is in the page)."""
    return page.locator(container).first.evaluate(_FIGURE_TEXTS)


def _figure_with(page, container: str, title: str) -> list[str]:
    def find():
        for texts in _figure_texts(page, container):
            if title in texts:
                return texts
        return None

    return _eventually(find, lambda t: t is not None, f"the figure {title!r}")


_SUPERSCRIPT = str.maketrans("⁻⁰¹²³⁴⁵⁶⁷⁸⁹", "-0123456789")


def _tick_value(text: str) -> float:
    """A tick label as a number: ``12,000``, ``0.01``, ``2.5×10⁷``, ``10⁻³``."""
    text = text.replace(",", "").replace("−", "-").strip()
    if "10" in text and any(c in text for c in "⁻⁰¹²³⁴⁵⁶⁷⁸⁹"):
        mantissa, _, power = text.rpartition("10")
        mantissa = mantissa.rstrip("×") or "1"
        return float(mantissa) * 10.0 ** int(power.translate(_SUPERSCRIPT))
    return float(text)


def _y_ticks(texts: list[str], ylabel_start: str) -> list[str]:
    """The y tick labels of a figure's texts: those between the x axis label and the y label
    (Bokeh draws x ticks, x label, y ticks, y label, title)."""
    end = next(i for i, t in enumerate(texts) if t.startswith(ylabel_start))
    start = next(i for i, t in enumerate(texts) if t.startswith("jet mSD"))
    return texts[start + 1:end]


def _switch_to_svg(page, view: str) -> None:
    page.locator(view).get_by_text("SVG", exact=True).first.click()


def _choose_preset(page, preset: str) -> None:
    """Pick ``preset`` in the composer and wait until the session has it (the address holds
    it); a page that connected a moment ago may miss the first pick on a loaded machine."""
    key = preset.split(":")[0]
    for attempt in range(3):
        page.locator(".preset select").select_option(label=preset)
        try:
            page.wait_for_function(
                f"() => decodeURIComponent(window.location.search).includes('d={key}')",
                timeout=40_000)
            return
        except Exception:
            if attempt == 2:
                raise
            page.locator(".preset select").select_option(index=0)


# --- 12: plots a physicist reads at a glance ------------------------------------------------
def test_stack_axes_ticks_and_window(browser, served):  # noqa: F811
    page = _open(browser, served)
    try:
        _switch_to_svg(page, ".scan-view")
        stack = _figure_with(page, ".scan-view", "Per-process stack at the chosen efficiency")
        # the y label states the bin width (5 GeV bins), not "/ bin"
        ylabel = next(t for t in stack if t.startswith("events"))
        assert ylabel.startswith("events / 5 GeV"), stack
        # the window's dotted lines are named in the legend
        assert any(t.startswith("significance window") and "GeV" in t for t in stack), stack
        # log axis: the lowest tick is within about 10^4 of the highest, not at 1e-10
        ticks = [_tick_value(t) for t in _y_ticks(stack, "events")]
        assert ticks and min(ticks) >= max(ticks) * 1e-4, ticks

        # linear axes: readable tick labels on both figures (yields reach 10^6-10^7 per bin)
        page.locator(".scan-view").get_by_text("linear", exact=True).first.click()

        def linear_ticks():
            texts = _figure_with(page, ".scan-view", "Jet mSD at each efficiency")
            return _y_ticks(texts, "events")

        labels = _eventually(linear_ticks, lambda t: t and max(map(_tick_value, t)) >= 1e6,
                             "the linear curves' y ticks")
        stack_labels = _y_ticks(_figure_with(page, ".scan-view",
                                             "Per-process stack at the chosen efficiency"),
                                "events")
        for label in labels + stack_labels:
            assert not re.search(r"\de[+-]?\d", label), labels + stack_labels
            _tick_value(label)  # each one reads as a number
    finally:
        page.close()


def test_significance_defaults_to_the_targeted_process(browser, served):  # noqa: F811
    page = _open(browser, served)
    try:
        expectations = {"A1: X->cs": {"W+jets"}, "A3: X->b q q": {"ttbar"},
                        "A2: X->bb": {"Z+jets", "Higgs"}}
        for preset, signals in expectations.items():
            _choose_preset(page, preset)
            _tab(page, "Significance", ".significance-text")
            chosen = _eventually(
                lambda: page.locator(".significance-view select").first.input_value(),
                lambda value: value in signals, f"the signal for {preset}")
            summary = _eventually(lambda: _text(page, ".significance-text"),
                                  lambda t: chosen in t and preset in t, "the summary")
            assert "Best Z" in summary
            background = _text(page, ".significance-background")
            assert f"Signal: {chosen}" in background and "Background:" in background
            others = [p for p in ("QCD", "W+jets", "Z+jets", "ttbar", "Higgs") if p != chosen]
            assert all(p in background.split("Background:")[1] for p in others), background
            _tab(page, "Spectrum", ".scan-summary")

        # ε_B has a subscript in the hover (HTML); the axis says it in words, never "ε_B"
        _tab(page, "Significance", ".significance-text")
        _switch_to_svg(page, ".significance-view")
        texts = _figure_with(page, ".significance-view", "Significance in the mass window")
        assert "background efficiency" in texts, texts
        assert not any(mark in t for t in texts for mark in ("ε_B", "eps_B", "\\text", "$$")), texts
        plot = page.locator(".significance-view .bk-Figure").first.bounding_box()
        page.mouse.move(plot["x"] + plot["width"] * 0.5, plot["y"] + plot["height"] * 0.5)
        hover = _eventually(lambda: page.locator(".significance-hover").first.inner_html()
                            if page.locator(".significance-hover").count() else "",
                            lambda h: "sub" in h, "the hover")
        assert "ε<sub>B</sub>" in hover
    finally:
        page.close()


# --- 13: the latent view ------------------------------------------------------------------
def _latent(page):
    _tab(page, "Latent space", ".latent-plot canvas")
    page.wait_for_selector(".latent-help", timeout=PAGE_MS)
    time.sleep(3.0)  # let the datashaded image arrive


def _plot_pixels(page) -> tuple[np.ndarray, dict]:
    """The latent plot's canvas as an (h, w, 3) array, and its box on the page."""
    from PIL import Image

    box = latent_canvas_box(page, timeout=WAIT_S)
    image = Image.open(io.BytesIO(page.screenshot(clip=box))).convert("RGB")
    pixels = np.asarray(image.resize((int(box["width"]), int(box["height"]))), dtype=np.int32)
    return pixels, box


def _dark_on_edges(pixels: np.ndarray, box: dict, corners) -> int:
    """How many near-black pixels lie within 3 px of the rectangle ``corners`` (page
    coordinates): the dashed outline of a selection (the points are coloured, never black)."""
    (x0, y0), (x1, y1) = ((c[0] - box["x"], c[1] - box["y"]) for c in corners)
    x0, x1 = sorted((int(x0), int(x1)))
    y0, y1 = sorted((int(y0), int(y1)))
    dark = (pixels < 70).all(axis=2)
    band = np.zeros_like(dark)
    for x in (x0, x1):
        band[y0 + 6:y1 - 6, max(x - 3, 0):x + 4] = True
    for y in (y0, y1):
        band[max(y - 3, 0):y + 4, x0 + 6:x1 - 6] = True
    return int((dark & band).sum())


def _drag_box(page, box: dict, start, end) -> tuple[tuple[float, float], tuple[float, float]]:
    """Drag a box from ``start`` to ``end`` (fractions of the plot) until the page reports a
    selection (a plot redrawn a moment ago may miss the first drag on a loaded machine)."""
    a = (box["x"] + box["width"] * start[0], box["y"] + box["height"] * start[1])
    b = (box["x"] + box["width"] * end[0], box["y"] + box["height"] * end[1])
    for attempt in range(3):
        drag(page, a, b, steps=10)
        page.mouse.move(2, 2)  # off the plot: no hover line
        try:
            page.wait_for_selector(".latent-selected", timeout=40_000)
            return a, b
        except Exception:
            if attempt == 2:
                raise
    return a, b


def test_hover_names_the_jets_process(browser, served):  # noqa: F811
    page = _open(browser, served)
    try:
        _latent(page)
        pixels, box = _plot_pixels(page)
        height, width = pixels.shape[:2]
        red, green, blue = (pixels[..., i] for i in range(3))
        # ttbar's red (#d62728) in its cluster (top middle), QCD's light blue (#a6bddb) in its
        # cluster (bottom left), as a person sees them (lighter where few jets)
        top_middle = np.zeros((height, width), dtype=bool)
        top_middle[int(height * 0.1):int(height * 0.5), int(width * 0.3):int(width * 0.6)] = True
        left = np.zeros((height, width), dtype=bool)
        left[int(height * 0.4):int(height * 0.85), int(width * 0.08):int(width * 0.4)] = True
        ttbar = top_middle & (red - np.maximum(green, blue) > 50) & (abs(green - blue) < 25)
        qcd = left & (blue - red > 25) & (green > red) & (red > 110) & (red < 215)
        rng = np.random.default_rng(0)
        picks = []
        for name, mask in (("ttbar", ttbar), ("QCD", qcd)):
            ys, xs = np.nonzero(mask)
            assert len(xs) >= 5, f"no {name} pixels found"
            chosen = rng.choice(len(xs), 5, replace=False)
            picks += [(name, xs[i], ys[i]) for i in chosen]
        order = [picks[i] for j in range(5) for i in (j, 5 + j)]  # alternate ttbar, QCD
        seen = []
        for name, x, y in order:
            page.mouse.move(box["x"] + x + 0.5, box["y"] + y + 0.5)
            time.sleep(0.3)  # the browser's own hover: no round trip to the server
            tips = page.locator(".bk-tooltip-content")
            text = " ".join(tips.nth(i).inner_text() for i in range(tips.count()))
            seen.append((name, text))
        assert not any("undefined" in text for _, text in seen), seen
        right = sum(f"process:\t{name}" in text.replace(": ", ":\t") for name, text in seen)
        assert right >= 8, seen  # a spread pixel's sample may be hidden, never another name
        assert all(not text or name in text for name, text in seen), seen
    finally:
        page.close()


def test_selection_outline_and_constituents_column(browser, served):  # noqa: F811
    page = _open(browser, served)
    try:
        _latent(page)
        before, box = _plot_pixels(page)
        corners = _drag_box(page, box, (0.25, 0.38), (0.42, 0.66))
        page.wait_for_selector(".latent-selected", timeout=PAGE_MS)
        assert _dark_on_edges(before, box, corners) < 20  # nothing drawn there before
        drawn = _eventually(lambda: _dark_on_edges(_plot_pixels(page)[0], box, corners),
                            lambda n: n > 80, "the selection's outline")
        assert drawn > 80

        # recolouring keeps the live selection's outline
        page.locator(".latent-view select").first.select_option(label="most probable class")
        page.wait_for_function("() => true")
        time.sleep(3.0)
        _eventually(lambda: _dark_on_edges(_plot_pixels(page)[0], box, corners),
                    lambda n: n > 80, "the outline after recolouring")
        assert page.locator(".latent-selected").count() == 1

        # "Clear selection" removes it
        page.get_by_text("Clear selection", exact=True).click()
        page.wait_for_selector(".latent-help", timeout=PAGE_MS)
        _eventually(lambda: _dark_on_edges(_plot_pixels(page)[0], box, corners),
                    lambda n: n < 20, "the outline after Clear selection")

        # the table marks which jets carry constituents: select every jet; the most X->bb-like
        # (they head the table) carry them, most others do not
        page.locator(".latent-view select").first.select_option(label="process")
        time.sleep(3.0)
        _drag_box(page, box, (0.07, 0.1), (0.84, 0.87))  # the frame, corner to corner
        page.wait_for_selector(".latent-selected", timeout=PAGE_MS)
        rows = _eventually(lambda: _table_rows(page), lambda r: len(r) >= 12, "the table")
        stored = dict(zip(served.carrying.tolist(), served.lengths[served.carrying].tolist()))
        marks = []
        for jet, mark in rows:
            expected = f"✓ {stored[jet]}" if jet in stored else "—"
            assert mark == expected, (jet, mark, expected)
            marks.append(mark)
        assert any(m.startswith("✓") for m in marks) and "—" in marks, marks
    finally:
        page.close()


def _table_rows(page) -> list[tuple[int, str]]:
    """(jet, constituents) of each row the selected-jets table shows."""
    table = page.locator(".selection-table")
    header = [h.strip() for h in table.locator(".tabulator-col-title").all_inner_texts()]
    if "constituents" not in header:
        return []
    jet, column = header.index("jet"), header.index("constituents")
    rows = []
    for row in table.locator(".tabulator-row").all():
        cells = row.locator(".tabulator-cell").all_inner_texts()
        if len(cells) == len(header):
            rows.append((int(cells[jet].replace(",", "")), cells[column].strip()))
    return rows


# --- 7: rescoring ---------------------------------------------------------------------------
def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _outputs(server) -> list[Path]:
    return sorted(p for p in server.output.glob("*.parquet")) if server.output.exists() else []


def _rescore(page, model: str) -> tuple[str, list[str]]:
    """Rescore with ``model`` as a person does; the final status and the progress seen."""
    previous = _text(page, ".rescore-status-text")
    page.locator(".rescoring select").first.select_option(label=model)
    page.get_by_role("button", name="Rescore").click()
    progress: list[str] = []
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        status = _text(page, ".rescore-status-text")
        if status.startswith(("queued", "running")) and status not in progress:
            progress.append(status)
        if "failed" in status:
            raise AssertionError(status)
        if status.startswith("✓") and (progress or status != previous):
            return status, progress
        time.sleep(0.1)
    raise AssertionError(f"rescoring with {model}: still {status!r}")


def test_rescoring_is_bounded(browser, served):  # noqa: F811
    page = _open(browser, served)
    try:
        _tab(page, "Rescoring", ".rescoring select")
        # the model that made the stored scores is not offered, and the page says why
        options = page.locator(".rescoring select option").all_inner_texts()
        assert sorted(options) == ["other-a.pt", "other-b.pt"], options
        assert "stored.pt" in _text(page, ".rescore-same-text")
        assert "reproduce" in _text(page, ".rescore-same-text")

        memory = [_rss_bytes(served.process.pid)]
        seen = []
        for model in ("other-a.pt", "other-b.pt", "other-a.pt"):
            status, progress = _rescore(page, model)
            seen += progress
            time.sleep(2.0)
            memory.append(_rss_bytes(served.process.pid))
            files = _outputs(served)
            # one rescored dataset kept, always made from the original (names never grow)
            assert len(files) == 1, files
            assert files[0].name.count("-rescored-") == 1, files
            assert files[0].name.startswith("jets-rescored-" + model.removesuffix(".pt"))
            assert f"rescored {N_CARRYING:,} jets" in status, status

        # the progress counts the jets actually scored: those with constituents
        counts = [re.search(r"([\d,]+) / ([\d,]+) jets", text) for text in seen]
        counts = [(int(m[1].replace(",", "")), int(m[2].replace(",", ""))) for m in counts if m]
        assert counts, seen
        assert all(total == N_CARRYING and done <= total for done, total in counts), seen

        size = _outputs(served)[0].stat().st_size
        # the server's memory: the first rescoring loads the scorer (torch) and one more
        # dataset; the later ones replace that dataset (about its file's size in memory: its
        # scores and latents), where keeping them would add one each
        later = memory[3] - memory[1]
        assert later < size, (memory, size)
    finally:
        page.close()
