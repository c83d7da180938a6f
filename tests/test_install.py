"""What an installed package tells and asks for: its version (``sophon --version``, the page
header, every dataset it writes) and, for an optional part that is not installed, the message
naming what is missing and how to install it (:mod:`sophon.extras`). The built wheel itself,
installed in a fresh environment: tests/test_wheel.py."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sophon import __version__, cli, extras
from sophon.extras import MissingExtraError, require, require_all
from sophon.store import (DatasetError, DatasetMetadata, JetDataset, read_metadata,
                          restamp_metadata, write_dataset)
from sophon.synthetic import write_synthetic_dataset

ROOT = Path(__file__).resolve().parents[1]


def test_the_version_has_one_source():
    assert re.fullmatch(r"\d+\.\d+\.\d+([.-]?\w+)?", __version__)
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'dynamic = ["version"]' in pyproject
    assert 'version = { attr = "sophon.__version__" }' in pyproject
    assert not re.search(r'^version\s*=\s*"', pyproject, re.MULTILINE)


def test_sophon_version(capsys):
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out == f"sophon (sophon-explorer) {__version__}\n"


def test_datasets_record_the_version_that_wrote_them(tmp_path):
    path = write_synthetic_dataset(tmp_path / "jets.parquet", 50, seed=1)
    assert JetDataset(path).metadata.sophon_version == __version__
    raw = json.loads(pq.read_schema(path).metadata[b"sophon"])
    assert raw["sophon_version"] == __version__


def test_a_file_without_a_version_reads_as_unknown_and_a_bad_one_is_refused(tmp_path):
    path = write_synthetic_dataset(tmp_path / "jets.parquet", 50, seed=1)
    table = pq.read_table(path)
    raw = json.loads(table.schema.metadata[b"sophon"])
    del raw["sophon_version"]
    older = tmp_path / "older.parquet"
    pq.write_table(table.replace_schema_metadata({b"sophon": json.dumps(raw)}), older)
    assert JetDataset(older).metadata.sophon_version == ""
    bad = tmp_path / "bad.parquet"
    pq.write_table(table.replace_schema_metadata(
        {b"sophon": json.dumps({**raw, "sophon_version": ["0.1"]})}), bad)
    with pytest.raises(DatasetError, match=r"unreadable 'sophon' metadata \('sophon_version' "
                                           r"is \"\['0.1'\]\", not a version\)"):
        JetDataset(bad)


def test_a_rewritten_file_names_the_rewriting_version(tmp_path):
    rng = np.random.default_rng(0)
    scores = rng.dirichlet(np.ones(188), 5).astype(np.float32)
    path = write_dataset(tmp_path / "old.parquet",
                         {"jet_sdmass": np.full(5, 80, np.float32)}, scores=scores,
                         metadata=DatasetMetadata(luminosity_fb=2.0, sophon_version="0.0.1"))
    table = pq.read_table(path)
    assert read_metadata(table.schema).sophon_version == "0.0.1"
    stamped = read_metadata(restamp_metadata(table).schema)
    assert (stamped.sophon_version, stamped.luminosity_fb) == (__version__, 2.0)
    plain = pa.table({"x": [1]})
    assert restamp_metadata(plain) is plain  # not a dataset: left alone


def test_generated_files_record_the_version():
    pytest.importorskip("pythia8mc")
    from sophon.generate.driver import _versions
    from sophon.generate.writer import with_metadata

    assert _versions()["sophon-explorer"] == __version__
    table = with_metadata(pa.table({"x": [1.0]}), {"sample": "sm"}, luminosity_fb=138.0)
    assert json.loads(table.schema.metadata[b"sophon"]) == {"luminosity_fb": 138.0,
                                                            "sophon_version": __version__}


def test_the_page_header_shows_the_version():
    from app.explorer import Explorer
    from app.page import SophonApp

    page = SophonApp(explorer=Explorer(problem="no data here")).page()
    header = page.objects[0].object
    assert f"<span class='sophon-version'" in header and f">v{__version__}</span>" in header


# --- missing extras ---------------------------------------------------------------------------
def _not_installed(monkeypatch, *modules: str) -> None:
    real = extras._installed
    monkeypatch.setattr(extras, "_installed", lambda m: m not in modules and real(m))


def test_a_missing_module_of_an_extra_is_named_with_its_install_command(monkeypatch):
    _not_installed(monkeypatch, "onnxruntime", "fastjet", "pythia8mc")
    with pytest.raises(MissingExtraError) as missing:
        require("onnxruntime", "onnx", "ONNX scoring")
    assert str(missing.value) == ("ONNX scoring needs onnxruntime, which is not installed: "
                                  "pip install 'sophon-explorer[onnx]'")
    assert (missing.value.name, missing.value.extra) == ("onnxruntime", "onnx")
    assert isinstance(missing.value, ModuleNotFoundError)
    with pytest.raises(MissingExtraError, match=r"^event generation needs pythia8mc and fastjet, "
                                                r"which are not installed: pip install "
                                                r"'sophon-explorer\[generate\]'$"):
        require_all("generate", "event generation")
    assert require("onnx", "onnx", "ONNX export").__name__ == "onnx"  # installed: the module
    with pytest.raises(ValueError, match="'torch' is not a module of the 'onnx' extra"):
        require("torch", "onnx", "scoring")


def test_a_command_whose_extra_is_missing_says_what_to_install(monkeypatch, capsys):
    error = MissingExtraError("sophon.generate (event generation with Pythia 8 and FastJet)",
                              "generate", ("pythia8mc",))
    real_import = cli.importlib.import_module

    def importing(name):
        if name == "sophon.generate":
            raise error
        return real_import(name)

    monkeypatch.setattr(cli.importlib, "import_module", importing)
    assert "generate" in cli.build_parser().format_help()  # still listed
    for argv in (["generate", "sm", "--events", "10", "-o", "x"], ["generate", "--help"]):
        assert cli.main(argv) == 2
        assert capsys.readouterr().err == f"sophon generate: error: {error}\n"


def test_sophon_serve_passes_its_options_to_the_server_script(monkeypatch, tmp_path):
    from app import serve

    seen = {}

    def fake_main(argv, prog):
        seen.update(argv=argv, prog=prog)
        return 0

    monkeypatch.setattr(serve, "main", fake_main)
    assert cli.main(["serve", "--host", "0.0.0.0", "--port", "6006", "--data", "x"]) == 0
    assert seen == {"argv": ["--host", "0.0.0.0", "--port", "6006", "--data", "x"],
                    "prog": "sophon serve"}
    with pytest.raises(SystemExit):  # other commands still refuse unknown options
        cli.main(["synthetic", "-o", str(tmp_path / "x.parquet"), "--no-such-option"])
