import json
import os

import pytest

from daat import artifacts as A


def _make(tmp_path, determining=None):
    return A.create_or_open(
        tmp_path, "demo", determining or {"a": 1}, config={"a": 1}, lineage=["parent-1"]
    )


def test_create_then_reopen_same_key(tmp_path):
    art = _make(tmp_path)
    assert art.id.startswith("demo-") and len(art.id) == len("demo-") + 16
    assert not art.complete
    art.write_bytes("data/x.bin", b"hello", samples=3)
    art.mark_complete()
    again = _make(tmp_path)
    assert again.path == art.path and again.complete
    m = again.manifest
    assert m["lineage"] == ["parent-1"]
    assert m["files"]["data/x.bin"] == {
        "sha256": "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824",
        "bytes": 5,
        "samples": 3,
    }
    assert m["versions"]["torch"] != "not installed"
    assert _make(tmp_path, {"a": 2}).path != art.path


def test_content_key_is_order_independent():
    assert A.content_key({"a": 1, "b": [1, 2]}) == A.content_key({"b": [1, 2], "a": 1})
    assert A.content_key({"a": 1}) != A.content_key({"a": 2})


def test_verify_names_the_flipped_file(tmp_path):
    art = _make(tmp_path)
    art.write_bytes("s/one.tar", bytes(range(200)))
    art.write_bytes("s/two.tar", b"x" * 100)
    art.mark_complete()
    assert A.verify(art.path) == []
    p = art.path / "s/two.tar"
    data = bytearray(p.read_bytes())
    data[50] ^= 0x01
    p.write_bytes(bytes(data))
    problems = A.verify(art.path)
    assert len(problems) == 1 and problems[0].startswith("s/two.tar: sha256")
    (art.path / "s/one.tar").unlink()
    assert any(p.startswith("s/one.tar: missing") for p in A.verify(art.path))


def test_incomplete_is_reported_by_verify_and_open(tmp_path):
    art = _make(tmp_path)
    assert any("incomplete" in p for p in A.verify(art.path))
    with pytest.raises(A.ArtifactError, match="incomplete"):
        A.open_artifact(art.path, require_complete=True)
    with pytest.raises(A.ArtifactError, match="expected 'run'"):
        A.open_artifact(art.path, kind="run")


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    target = tmp_path / "f.txt"
    A.atomic_write_text(target, "old")
    with pytest.raises(RuntimeError):
        with A.atomic_path(target) as tmp:
            tmp.write_text("new, half written")
            raise RuntimeError("crash")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_corrupt_manifest_is_a_clear_error(tmp_path):
    d = tmp_path / "demo-x"
    d.mkdir()
    (d / "manifest.json").write_text("{not json")
    with pytest.raises(A.ArtifactError, match="corrupt manifest"):
        A.open_artifact(d)
    with pytest.warns(UserWarning, match="corrupt manifest"):
        assert A.list_artifacts(tmp_path) == []


def test_newer_schema_refused(tmp_path):
    art = _make(tmp_path)
    m = json.loads((art.path / "manifest.json").read_text())
    m["schema"] = A.SCHEMA_VERSION + 1
    (art.path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(A.ArtifactError, match="newer"):
        A.open_artifact(art.path)


def test_atomic_files_honour_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        A.atomic_write_text(tmp_path / "shared.txt", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "shared.txt").stat().st_mode & 0o777 == 0o644


def _as_schema_one(art_dir):
    """What an older daat wrote: schema 1, no digest."""
    m = json.loads((art_dir / "manifest.json").read_text())
    m["schema"] = 1
    del m["digest"]
    (art_dir / "manifest.json").write_text(json.dumps(m))


def test_a_manifest_without_digest_is_refused_until_its_command_upgrades_it(tmp_path):
    art = _make(tmp_path)
    art.write_bytes("data/x.bin", b"hello")
    art.mark_complete()
    art.unlock()
    _as_schema_one(art.path)
    with pytest.raises(A.ArtifactError, match="no digest .*run the command that made it again"):
        A.open_artifact(art.path)
    assert any("no digest" in p for p in A.verify(art.path))
    again = _make(tmp_path)  # the same command: every file re-hashed, then the digest added
    assert again.path == art.path and again.complete
    again.unlock()
    assert A.open_artifact(art.path).manifest["schema"] == A.SCHEMA_VERSION
    assert A.verify(art.path) == []


def test_an_old_manifest_whose_files_changed_is_not_upgraded(tmp_path):
    art = _make(tmp_path)
    art.write_bytes("data/x.bin", b"hello")
    art.mark_complete()
    art.unlock()
    _as_schema_one(art.path)
    (art.path / "data/x.bin").write_bytes(b"HELLO")
    with pytest.raises(
        A.ArtifactError, match="older daat and cannot be upgraded: data/x.bin: sha256"
    ):
        _make(tmp_path)


def test_the_digest_covers_every_field(tmp_path):
    art = _make(tmp_path)
    art.save()
    for field, value in (("lineage", ["other"]), ("status", "complete"), ("key", "0" * 64)):
        m = json.loads((art.path / "manifest.json").read_text())
        m[field] = value
        (art.path / "manifest.json").write_text(json.dumps(m))
        with pytest.raises(A.ArtifactError, match="digest does not match"):
            A.open_artifact(art.path)
        art.save()  # the writer's own save re-seals it
    art.unlock()
