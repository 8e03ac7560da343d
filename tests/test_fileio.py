"""centermask2.fileio: atomic writes, bounded readers with named errors, output folders (links, locks)."""

import json
import os
import subprocess
import sys

import pytest

from centermask2.errors import InputError, MissingFileError, OutputError
from centermask2.fileio import (
    atomic_write_json,
    check_choice,
    check_int,
    check_keys,
    check_output_file,
    ensure_writable_dir,
    output_session,
    path_inside,
    plain_name,
    read_json,
    remove_stale_temp_files,
)
from golden import ROOT


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


# ---------------------------------------------------------------- issue 24: bounded readers, output folders


@pytest.mark.parametrize(("text", "message"), [
    ('{"a": NaN}', "NaN is not a JSON number"),
    ('[1, -Infinity]', "-Infinity is not a JSON number"),
    ("[" * 200_000 + "]" * 200_000, "nested more than 100 levels deep"),
    ('{"a": ' * 101 + "1" + "}" * 101, "nested more than 100 levels deep"),
    ("[" + "9" * 5000 + "]", "not UTF-8 JSON"),
])
def test_read_json_refuses_what_json_is_not(tmp_path, text, message):
    (tmp_path / "x.json").write_text(text)
    with pytest.raises(InputError, match=message):
        read_json(tmp_path / "x.json", "manifest")


def test_read_json_accepts_nesting_to_the_limit(tmp_path):
    (tmp_path / "x.json").write_text("[" * 100 + "]" * 100)
    assert read_json(tmp_path / "x.json") == json.loads("[" * 100 + "]" * 100)


def test_read_json_refuses_large_files_and_pipes_before_reading(tmp_path):
    (tmp_path / "big.json").write_text("[" + "1, " * 100 + "1]")
    with pytest.raises(InputError, match=r"larger than a manifest can be \(303 bytes, at most 100\)"):
        read_json(tmp_path / "big.json", "manifest", max_bytes=100)
    os.mkfifo(tmp_path / "pipe.json")  # opening it for reading would wait for a writer forever
    with pytest.raises(InputError, match=r"'.*pipe\.json' is not a regular file \(a named pipe\)"):
        read_json(tmp_path / "pipe.json", "manifest")
    with pytest.raises(InputError, match=r"is not a regular file \(a character device\)"):
        read_json("/dev/zero")
    (tmp_path / "link.json").symlink_to(tmp_path / "big.json")
    assert len(read_json(tmp_path / "link.json")) == 101
    with pytest.raises(InputError, match="is a symbolic link"):
        read_json(tmp_path / "link.json", follow_links=False)


def test_value_checks_name_the_file_the_key_and_the_value():
    assert check_int(3, "'height'", "'f.json'", minimum=1) == 3
    for value, message in ((1.5, "must be an integer, got 1.5"), (True, "must be an integer, got True"),
                           ("3", "must be an integer, got '3'"), (0, "must be from 1 to 9, got 0")):
        with pytest.raises(InputError, match=f"^'f.json': 'height' {message}$"):
            check_int(value, "'height'", "'f.json'", minimum=1, maximum=9)
    with pytest.raises(InputError, match="'index_base' must be 0 or 1, got '0'"):
        check_choice("0", "'index_base'", "'m.json'", (0, 1))
    with pytest.raises(InputError, match="lacks 'b' and has unknown key\\(s\\) 'c'"):
        check_keys({"a": 1, "c": 2}, "'m.json'", {"a", "b"})


def test_output_folder_with_a_link_inside_is_refused(tmp_path):
    (tmp_path / "elsewhere").mkdir()
    out = tmp_path / "out"
    out.mkdir()
    (out / "image_sizes").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(OutputError, match=r"holds a symbolic link 'image_sizes' \(to .*elsewhere'\).*--output"):
        ensure_writable_dir(out)
    # the folder of one output file (an export's --output) is shared with other files: not refused
    assert check_output_file(out / "model.onnx") == out / "model.onnx"
    (out / "image_sizes").unlink()
    assert ensure_writable_dir(out) == out


def test_an_output_file_that_is_a_device_or_pipe_is_refused_not_replaced(tmp_path):
    """``--output /dev/null`` (or a named pipe): the atomic write would replace the device with a
    regular file; refused by name, and the pipe is left as it was."""
    import stat

    os.mkfifo(tmp_path / "m.onnx")
    with pytest.raises(OutputError, match=r"--output '.*m\.onnx' is not a regular file \(a named pipe\)"):
        check_output_file(tmp_path / "m.onnx", "--output")
    assert stat.S_ISFIFO(os.lstat(tmp_path / "m.onnx").st_mode)
    with pytest.raises(OutputError, match=r"is not a regular file \(a character device\)"):
        check_output_file("/dev/null")
    (tmp_path / "link.onnx").symlink_to("/dev/null")  # a link is replaced itself, never what it points to
    assert check_output_file(tmp_path / "link.onnx") == tmp_path / "link.onnx"


_HOLD = ("import sys\nfrom centermask2.fileio import ensure_writable_dir\nfrom centermask2.errors import OutputError\n"
         "try:\n    ensure_writable_dir(sys.argv[1], '--output')\nexcept OutputError as e:\n    print(e)\nelse:\n"
         "    print('ok')\n")


def _other_process(folder) -> str:
    return subprocess.run([sys.executable, "-c", _HOLD, str(folder)], capture_output=True, text=True, check=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}).stdout.strip()


def test_a_second_run_into_a_folder_in_use_stops_until_the_first_ends(tmp_path):
    out = tmp_path / "out"
    with output_session():
        ensure_writable_dir(out)
        ensure_writable_dir(out)  # again in the same run: fine
        assert "another run is using the output folder" in _other_process(out)
        assert "--output" in _other_process(out)
    assert _other_process(out) == "ok"  # released when the session (a script's main) ends
    with output_session():
        with output_session():
            ensure_writable_dir(out)
        assert _other_process(out) == "ok"  # an inner session (a stage function) releases what it took


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
