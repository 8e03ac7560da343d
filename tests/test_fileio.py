"""centermask2.fileio: atomic writes, named JSON errors, writable folders."""

import os

import pytest

from centermask2.errors import InputError, MissingFileError, OutputError
from centermask2.fileio import (
    atomic_write_json,
    ensure_writable_dir,
    path_inside,
    plain_name,
    read_json,
    remove_stale_temp_files,
)


def test_read_json_names_the_file_and_the_problem(tmp_path):
    with pytest.raises(MissingFileError, match=r"manifest not found: .*nope\.json.*; run stage 2"):
        read_json(tmp_path / "nope.json", "manifest", hint="run stage 2")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(InputError, match=r"bad\.json' is not a valid COCO annotation file \(not UTF-8 JSON"):
        read_json(tmp_path / "bad.json", "COCO annotation file")
    (tmp_path / "latin.json").write_bytes(b'{"a": "\xe9"}')
    with pytest.raises(InputError, match="latin.json"):
        read_json(tmp_path / "latin.json")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(InputError, match="expected a JSON dict, found list"):
        read_json(tmp_path / "list.json", expect=dict)
    with pytest.raises(MissingFileError, match="JSON file not found"):
        read_json(tmp_path)  # a folder is not a file
    atomic_write_json({"a": [1]}, tmp_path / "ok.json")
    assert read_json(tmp_path / "ok.json", expect=dict) == {"a": [1]}


def test_errors_keep_their_builtin_bases(tmp_path):
    """Callers that catch ValueError / FileNotFoundError keep working."""
    with pytest.raises(FileNotFoundError, match="nope.json"):
        read_json(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match=r"bad\.json' is not a valid JSON file"):
        read_json(tmp_path / "bad.json")


def test_output_folder_that_is_a_file(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="--out"):
        ensure_writable_dir(tmp_path / "file" / "sub", option="--out")


def test_stale_temp_files_are_swept(tmp_path):
    (tmp_path / ".a.bin.x1y2.tmp").write_text("")
    (tmp_path / ".other.txt.x1y2.tmp").write_text("")
    assert remove_stale_temp_files(tmp_path, lambda name: name.endswith(".bin")) == 1
    assert os.listdir(tmp_path) == [".other.txt.x1y2.tmp"]


@pytest.mark.parametrize("name", ["../x", "/abs/x", "a/b", "a\\b", "..", ".", "", "x\0y", 7])
def test_plain_name_refuses_folders(name):
    with pytest.raises(InputError, match="not a plain file name"):
        plain_name(name, "stem")


def test_plain_name_accepts_names():
    assert plain_name("000000000139") == "000000000139"
    assert plain_name("a b.c") == "a b.c"  # whitespace is the caller's concern


def test_path_inside(tmp_path):
    assert path_inside(tmp_path, "a/b.bin") == tmp_path / "a" / "b.bin"
    for bad in ("../x.bin", "/etc/passwd", "a/../../x", "", "a\0b"):
        with pytest.raises(InputError, match="inside|outside"):
            path_inside(tmp_path, bad, "bin")
    (tmp_path / "link").symlink_to(tmp_path.parent)
    with pytest.raises(InputError, match="points outside"):
        path_inside(tmp_path, "link/x.bin")


def test_a_full_disk_names_the_file(tmp_path, monkeypatch):
    import errno

    from centermask2.fileio import atomic_write_bytes

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match="No space left on device") as info:
        atomic_write_bytes(b"data", tmp_path / "out.bin")
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(tmp_path / "out.bin")
    assert os.listdir(tmp_path) == []  # the temporary file is gone


def test_free_space_is_checked_before_long_writes(tmp_path, monkeypatch):
    import shutil

    from centermask2.fileio import check_free_space

    check_free_space(tmp_path / "m.onnx", 1000, "--output")  # plenty
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(100_000_000, 90_000_000, 10_000_000))
    with pytest.raises(OutputError, match=r"not enough free space for .*m\.onnx.*about 50\.0 MB.*10\.0 MB free"):
        check_free_space(tmp_path / "m.onnx", 50_000_000, "--output")
