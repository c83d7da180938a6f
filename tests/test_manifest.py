import hashlib

import pytest
import yaml

from sophon.manifest import (DEFAULT_MANIFEST, ManifestError, load_manifest, sha256_file,
                             verify_path)


def _manifest(tmp_path, content: bytes):
    data = tmp_path / "data"
    data.mkdir()
    (data / "jets.parquet").write_bytes(content)
    manifest = tmp_path / "manifest.yaml"
    manifest.write_text(yaml.safe_dump({"project": {"datasets": [{
        "name": "jets", "path": "data/jets.parquet", "size": len(content),
        "sha256": hashlib.sha256(content).hexdigest(), "command": "sophon generate ...",
        "seed": 1}]}}))
    return manifest, data


def test_intact_file_verifies(tmp_path):
    manifest, data = _manifest(tmp_path, b"jets" * 100)
    assert verify_path(data, manifest, tmp_path) == [data / "jets.parquet"]
    assert sha256_file(data / "jets.parquet") == hashlib.sha256(b"jets" * 100).hexdigest()


def test_altered_and_missing_files_are_named(tmp_path):
    manifest, data = _manifest(tmp_path, b"jets" * 100)
    (data / "jets.parquet").write_bytes(b"stej" * 100)  # same size, other content
    with pytest.raises(ManifestError, match=r"data/jets.parquet: altered: sha256"):
        verify_path(data, manifest, tmp_path)
    (data / "jets.parquet").write_bytes(b"x")
    with pytest.raises(ManifestError, match=r"altered: 1 bytes"):
        verify_path(data, manifest, tmp_path)
    (data / "jets.parquet").unlink()
    with pytest.raises(ManifestError, match=r"missing \(made by: sophon generate"):
        verify_path(data, manifest, tmp_path)


def test_unlisted_paths_have_nothing_to_verify(tmp_path):
    manifest, _ = _manifest(tmp_path, b"x")
    assert verify_path(tmp_path / "elsewhere", manifest, tmp_path) == []


def test_the_projects_manifest_parses_and_every_entry_verifies():
    for entry in load_manifest(DEFAULT_MANIFEST):
        verify_path(DEFAULT_MANIFEST.parent / entry.path)
