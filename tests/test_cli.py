import subprocess
import sys

from sophon.cli import main
from sophon.store import JetDataset


def test_synthetic_command_writes_a_valid_dataset(tmp_path):
    target = tmp_path / "synthetic.parquet"
    assert main(["synthetic", "-o", str(target), "--jets", "200", "--seed", "3"]) == 0
    dataset = JetDataset(target)
    assert dataset.n_jets == 200 and dataset.metadata.model_id == "synthetic"


def test_console_script_reports_errors_without_a_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "sophon.cli", "synthetic", "-o",
                             str(tmp_path / "x.parquet"), "--jets", "abc"],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "invalid int value: 'abc'" in result.stderr
