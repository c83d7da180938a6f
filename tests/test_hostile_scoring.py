"""Hostile input (issue 15, item 8) to ``sophon score``: each case asserts the exact outcome.

A jet with a non-finite constituent and a model that gives non-finite scores stop the run with a
message naming the file and the jet's row (nothing written for that input); an output folder that
cannot be written is refused before any jet is scored (exit code 2, no traceback; run as root, so
the folder lies inside a file rather than behind chmod); SIGTERM and SIGINT stop the run with
exit code 128 + signal and leave no temporary part; a wrong-shape checkpoint's error keeps every
line. The signal cases run ``sophon score`` in a subprocess.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from sophon.cli import main
from sophon.model import SophonModel, randomize_weights_, save_checkpoint, sophon_config
from sophon.scoring import score_files, score_table

ROOT = Path(__file__).resolve().parents[1]


class CountingScorer:
    """A stand-in scorer (uniform scores, zero latents) counting its calls; ``nan_row`` makes
    the scores of that jet NaN."""

    model_id = "counting@test"
    description = "counting"

    def __init__(self, nan_row: int | None = None):
        self.calls = 0
        self.nan_row = nan_row

    def score_ragged(self, inputs):
        self.calls += 1
        n = len(inputs)
        probabilities = np.full((n, 188), 1 / 188, dtype=np.float32)
        if self.nan_row is not None:
            probabilities[self.nan_row, 5] = np.nan
        return probabilities, np.zeros((n, 128), dtype=np.float32)


@pytest.fixture(scope="module")
def small(reference_table, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("input") / "small.parquet"
    pq.write_table(reference_table.slice(0, 20), path)
    return path


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    model = SophonModel(sophon_config(num_layers=1, num_cls_layers=1))
    return save_checkpoint(randomize_weights_(model, seed=3).eval(),
                           tmp_path_factory.mktemp("model") / "tiny.pt")


def _with_value(table: pa.Table, name: str, row: int, index: int | None, value: float):
    values = table[name].to_pylist()
    if index is None:
        values[row] = value
    else:
        values[row][index] = value
    return table.set_column(table.schema.get_field_index(name), name,
                            pa.array(values, table.schema.field(name).type))


def _score(*argv) -> int:
    return main(["score", *map(str, argv), "-q"])


def _left_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*")) if folder.exists() else []


@pytest.mark.parametrize("name, index, value, shown, where", [
    ("part_px", 2, float("nan"), "nan", "particle 2 of the jet; "),
    ("part_energy", 0, float("inf"), "inf", "particle 0 of the jet; "),
    ("part_d0err", 1, float("-inf"), "-inf", "particle 1 of the jet; "),
    ("jet_pt", None, float("nan"), "nan", ""),
])
def test_a_non_finite_input_stops_the_run_naming_the_jet(reference_table, tiny_checkpoint,
                                                         tmp_path, capsys, name, index, value,
                                                         shown, where):
    bad = tmp_path / "bad.parquet"
    pq.write_table(_with_value(reference_table.slice(0, 20), name, 6, index, value), bad)
    output = tmp_path / "out"
    assert _score(bad, "--model", tiny_checkpoint, "-o", output) == 2
    assert capsys.readouterr().err == (
        f"sophon score: error: {bad}: jet at row 6 has a non-finite value ({shown}) in column "
        f"{name!r} ({where}1 such value(s) in rows 0 to 19); stopped, no part written for this "
        "input: drop or fix the jet and rerun\n")
    assert _left_in(output) == []


def test_the_row_counts_across_chunks(reference_table, tmp_path):
    bad = tmp_path / "bad.parquet"
    pq.write_table(_with_value(reference_table.slice(0, 40), "part_py", 33, 0, float("nan")), bad)
    scorer = CountingScorer()
    with pytest.raises(ValueError) as info:
        score_files([bad], tmp_path / "out", scorer, chunk_jets=16, progress=False)
    assert str(info.value).startswith(f"{bad}: jet at row 33 has a non-finite value (nan) in "
                                      "column 'part_py' (particle 0 of the jet; 1 such value(s) "
                                      "in rows 32 to 39)")
    assert scorer.calls == 2  # the chunks before it were scored, nothing was written
    assert _left_in(tmp_path / "out") == []


def test_score_table_refuses_non_finite_inputs(reference_table):
    table = _with_value(reference_table.slice(0, 10), "part_energy", 4, 1, float("nan"))
    with pytest.raises(ValueError, match=r"^jets: jet at row 4 has a non-finite value \(nan\) in "
                                         r"column 'part_energy'"):
        score_table(table, CountingScorer(), source_name="jets")


def test_non_finite_model_output_stops_the_run_naming_the_jet(small, tmp_path):
    scorer = CountingScorer(nan_row=11)
    with pytest.raises(ValueError) as info:
        score_files([small], tmp_path / "out", scorer, progress=False)
    assert str(info.value) == (f"{small}: the model gave a non-finite score for the jet at row 11 "
                               "(1 such jet(s)); stopped, no part written for this input")
    assert _left_in(tmp_path / "out") == []


def test_a_model_with_a_nan_weight_is_caught_through_the_cli(small, tmp_path, capsys):
    model = randomize_weights_(SophonModel(sophon_config(num_layers=1, num_cls_layers=1)), seed=4)
    with torch.no_grad():
        next(p for n, p in model.named_parameters() if n.endswith("weight")).fill_(float("nan"))
    checkpoint = save_checkpoint(model.eval(), tmp_path / "nan.pt")
    assert _score(small, "--model", checkpoint, "-o", tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert err.startswith(f"sophon score: error: {small}: the model gave a non-finite score for "
                          "the jet at row 0 (20 such jet(s)); stopped")
    assert _left_in(tmp_path / "out") == []


def test_an_output_inside_a_file_is_refused_before_scoring(small, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    scorer = CountingScorer()
    with pytest.raises(ValueError) as info:
        score_files([small], blocker / "dataset", scorer, progress=False)
    assert str(info.value) == (f"{blocker / 'dataset'}: cannot write the output dataset there "
                               "(Not a directory); choose another -o folder")
    assert scorer.calls == 0
    with pytest.raises(ValueError) as info:
        score_files([small], blocker, scorer, progress=False)
    assert str(info.value) == (f"{blocker}: exists and is not a directory (the dataset is a "
                               "directory of parts)")
    assert scorer.calls == 0 and blocker.read_text() == "not a folder"


def test_an_unwritable_output_is_a_message_and_exit_2(small, tiny_checkpoint, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    result = subprocess.run([sys.executable, "-m", "sophon.cli", "score", str(small), "--model",
                             str(tiny_checkpoint), "-o", str(blocker / "sub" / "dataset"), "-q"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    target = blocker / "sub" / "dataset"
    assert result.stderr == (f"sophon score: error: {target}: cannot write the output dataset "
                             "there (Not a directory); choose another -o folder\n")


def test_a_read_only_output_folder_is_refused_before_scoring(small, tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root writes through chmod; the file-in-the-way cases cover root")
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o500)
    scorer = CountingScorer()
    try:
        with pytest.raises(ValueError, match="cannot write the output dataset there"):
            score_files([small], folder, scorer, progress=False)
    finally:
        folder.chmod(0o700)
    assert scorer.calls == 0


# A child that sends itself the signal while the part's temporary file is being written: the
# interruption lands exactly where a temporary file exists.
_SIGNAL_DURING_WRITE = """
import os, signal, sys
import pyarrow.parquet as pq
from sophon.cli import main

real = pq.write_table
def write_then_signal(table, where, **options):
    real(table, where, **options)
    assert os.path.exists(where)
    os.kill(os.getpid(), getattr(signal, sys.argv[1]))
    real(table, where, **options)  # the handler runs before this line finishes
pq.write_table = write_then_signal
sys.exit(main(["score", *sys.argv[2:]]))
"""


@pytest.mark.parametrize("name", ["SIGTERM", "SIGINT"])
def test_a_signal_during_the_write_leaves_no_temporary(small, tiny_checkpoint, tmp_path, name):
    output = tmp_path / "out"
    result = subprocess.run([sys.executable, "-c", _SIGNAL_DURING_WRITE, name, str(small),
                             "--model", str(tiny_checkpoint), "-o", str(output), "-q"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    signum = getattr(signal, name)
    assert result.returncode == 128 + signum
    assert result.stderr == (f"sophon score: stopped by {name}; the part being written was "
                             "removed, complete parts are kept (rerun the same command to "
                             "resume)\n")
    assert _left_in(output) == []


def test_sigterm_mid_run_exits_cleanly_and_a_rerun_resumes(small, tiny_checkpoint, tmp_path):
    inputs = []
    for k in range(40):
        copy = tmp_path / f"in-{k:02d}.parquet"
        copy.write_bytes(small.read_bytes())
        inputs.append(str(copy))
    output = tmp_path / "out"
    command = [sys.executable, "-m", "sophon.cli", "score", *inputs, "--model",
               str(tiny_checkpoint), "-o", str(output), "--threads", "1"]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and len(list(output.glob("part-*.parquet"))) < 2:
        if process.poll() is not None:
            break
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    if process.returncode == 0:
        pytest.skip("the run finished before the signal")
    assert process.returncode == 128 + signal.SIGTERM
    assert "Traceback" not in err
    assert err.rstrip().endswith("sophon score: stopped by SIGTERM; the part being written was "
                                 "removed, complete parts are kept (rerun the same command to "
                                 "resume)")
    left = _left_in(output)
    assert [name for name in left if not name.startswith("part-")] == []  # no temporary
    assert 2 <= len(left) < 40
    for name in left:  # every part that is there is complete
        assert pq.ParquetFile(output / name).metadata.num_rows == 20
    resumed = subprocess.run([*command, "-q"], cwd=ROOT, capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert len(_left_in(output)) == 40


def test_a_wrong_shape_checkpoint_error_keeps_every_line(small, tiny_checkpoint, tmp_path, capsys):
    state = torch.load(tiny_checkpoint, weights_only=True)
    narrow = SophonModel(sophon_config(num_layers=1, num_cls_layers=1,
                                       embed_dims=(64, 256, 64))).state_dict()
    mixed = {key: narrow.get(key, value) if key.startswith("mod.embed") else value
             for key, value in state.items()}
    bad = tmp_path / "mixed.pt"
    torch.save(mixed, bad)
    assert _score(small, "--model", bad, "-o", tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert err.startswith(f"sophon score: error: {bad}: not a loadable Sophon/ParticleTransformer "
                          "checkpoint (Error(s) in loading state_dict for SophonModel: size "
                          "mismatch for ")
    assert err.count("size mismatch for ") > 5  # not only the first line
    assert err.count("\n") == 1  # one line, no traceback
    assert _left_in(tmp_path / "out") == []
