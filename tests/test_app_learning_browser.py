"""The Learning tab in a real browser: `panel serve app` driven by Debian's chromium as a person
drives it. Type a jet set the dataset does not have (the page names it and starts nothing),
type a good one and two heads to average, click Train, wait for the held-out rejections, click
Use as discriminant and read the composer. The served dataset is SYNTHETIC (tests/test_app_learning.py's, smaller), its
model id naming the hash of the model file in the models folder. Skipped (with the reason) when
/usr/bin/chromium is absent, as in tests/test_app_browser.py whose browser fixture, Server and
helpers these tests use."""

from __future__ import annotations

import functools
import shutil

import pytest

from sophon.manifest import sha256_file

from test_app_browser import Server, browser, eventually  # noqa: F401
from test_app_learning import write_learning_dataset

pytestmark = pytest.mark.browser

WAIT_S = 300.0  # a training on a loaded two-core machine
PAGE_MS = 180_000  # a fresh server's first page on a loaded machine
_eventually = functools.partial(eventually, timeout=WAIT_S, poll=0.5)


@pytest.fixture(scope="module")
def served(browser, tmp_path_factory, model_file):  # noqa: F811
    pytest.importorskip("torch")
    tmp = tmp_path_factory.mktemp("learning-browser")
    models = tmp / "models"
    models.mkdir()
    model = shutil.copy(model_file[0], models / "small.pt")
    data = write_learning_dataset(tmp / "jets.parquet",
                                  f"small.pt@sha256:{sha256_file(model)[:12]}",
                                  n_qcd=4000, n_higgs=600)
    server = Server(data, tmp)
    yield server
    server.stop()


def _text(page, selector: str) -> str:
    locator = page.locator(selector)
    return locator.first.inner_text() if locator.count() else ""


def _type(page, selector: str, text: str) -> None:
    field = page.locator(selector).first
    field.click()
    field.fill(text)
    field.press("Enter")


def test_train_and_use_the_head(browser, served):  # noqa: F811
    page = browser.new_page(viewport={"width": 1500, "height": 1100})
    try:
        page.goto(served.url, timeout=PAGE_MS)
        page.wait_for_selector(".scan-summary", timeout=PAGE_MS)
        page.get_by_text("Learning", exact=True).click()
        page.wait_for_selector(".learning-signal input", timeout=PAGE_MS)
        assert page.locator(".learning-signal input").input_value() == "process:Higgs"

        # a process the dataset does not have: named under the field and when Train is clicked
        _type(page, ".learning-signal input", "process:Zprime")
        _eventually(lambda: _text(page, ".learning-set-status-text"),
                    lambda text: "unknown process 'Zprime'" in text, "the field's status")
        page.get_by_role("button", name="Train").click()
        status = _eventually(lambda: _text(page, ".learning-training-status-text"),
                             lambda text: "Not started" in text, "the refusal")
        assert "the processes are Higgs, QCD" in status

        # a good set and two heads averaged: the training runs in the background and reports
        # the held-out rejections
        _type(page, ".learning-signal input", "Higgs")
        _type(page, ".learning-ensemble input", "2")
        page.get_by_role("button", name="Train").click()
        result = _eventually(lambda: _text(page, ".learning-transfer-result-text"),
                             lambda text: "50%" in text, "the training's result")
        assert "30%" in result and "trained head" in result and "best node" in result
        assert "the average of 2 heads" in result
        rejection = float(page.locator(".learning-head-rejection").nth(1).inner_text()
                          .replace(",", ""))
        assert rejection > 2
        assert "done" in _text(page, ".learning-training-status-text")

        # the head becomes the session's discriminant: the composer names it
        page.get_by_role("button", name="Use as discriminant").click()
        name = _eventually(lambda: _text(page, ".composer-name"),
                           lambda text: "(trained head" in text, "the composer's discriminant")
        assert name.startswith("process:Higgs vs process:QCD")
        # the formula is the head's D = p_s / (p_s + p_b), not its stand-in's class sums
        # (KaTeX writes the TeX source into an annotation element)
        formula = _eventually(
            lambda: page.locator(".formula annotation").first.text_content(),
            lambda text: text is not None and "p_" in text, "the composer's formula")
        assert "g_" not in formula, formula
        page.get_by_text("Spectrum", exact=True).click()
        _eventually(lambda: _text(page, ".scan-summary"), lambda text: "Selected jets" in text,
                    "the spectrum's summary")
    finally:
        page.close()
