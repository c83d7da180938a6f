import hashlib
import re

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


def test_record_writes_the_rebuilt_files_size_and_digest_and_nothing_else(tmp_path):
    from sophon.manifest import record

    # the project's own manifest layout (comments, folded commands, two kinds), in a copy
    manifest = tmp_path / "data_manifest.yaml"
    manifest.write_text(DEFAULT_MANIFEST.read_text())
    entries = load_manifest(manifest)
    rebuilt = next(e for e in entries if e.kind == "model")
    file = tmp_path / rebuilt.path
    file.parent.mkdir(parents=True)
    file.write_bytes(b"new weights" * 7)
    with pytest.raises(ManifestError, match="altered"):
        verify_path(file, manifest, tmp_path)

    entry = record(file, manifest, tmp_path)
    assert (entry.size, entry.sha256) == (77, sha256_file(file))
    assert verify_path(file, manifest, tmp_path) == [file]
    after = load_manifest(manifest)
    assert [e for e in after if e.path != rebuilt.path] == \
        [e for e in entries if e.path != rebuilt.path]  # the other entries untouched
    changed = [a for a, b in zip(DEFAULT_MANIFEST.read_text().splitlines(),
                                 manifest.read_text().splitlines()) if a != b]
    assert len(changed) == 2 and all(re.match(r"\s+(size|sha256):", a) for a in changed)
    assert record(tmp_path / "data" / "not_listed.parquet", manifest, tmp_path) is None
