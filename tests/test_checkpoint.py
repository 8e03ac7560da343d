"""Tests for centermask2.checkpoint: safe reading of .pth/.pkl files and checked loading."""

from __future__ import annotations

import logging
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from centermask2.checkpoint import (
    LoadReport,
    UnsafeCheckpointError,
    apply_state_dict,
    load_state_dict_file,
    load_weights,
)


class TinyModel(nn.Module):
    """Stand-in with the name structure of a detector (backbone/head, params and a buffer)."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 1))
        self.head = nn.Linear(4, 2)
        self.register_buffer("scale", torch.ones(2))


def random_state(seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.rand(v.shape, generator=gen) for k, v in TinyModel().state_dict().items()}


def assert_model_equals(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    current = model.state_dict()
    assert list(current) == list(state)
    for key, value in state.items():
        torch.testing.assert_close(current[key], value.to(current[key].dtype), rtol=0, atol=0)


@pytest.fixture
def ckpt_dir(tmp_path: Path) -> Path:
    path = tmp_path / "check points"  # path with a space
    path.mkdir()
    return path


# ---- round trips ---------------------------------------------------------------------------
def test_pth_round_trip(ckpt_dir: Path) -> None:
    state = random_state()
    path = ckpt_dir / "model_final.pth"
    torch.save({"model": state, "iteration": 0}, path)

    loaded = load_state_dict_file(path)
    assert list(loaded) == list(state)
    for key in state:
        assert torch.equal(loaded[key], state[key]) and loaded[key].dtype == torch.float32

    model = TinyModel()
    report = load_weights(model, path)
    assert isinstance(report, LoadReport) and report.is_complete
    assert report.missing == [] and report.unexpected == [] and report.shape_mismatch == []
    assert report.loaded == list(state)
    assert_model_equals(model, state)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_pkl_round_trip_with_author(ckpt_dir: Path, protocol: int) -> None:
    state = random_state(1)
    path = ckpt_dir / "model_zoo.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": {k: v.numpy() for k, v in state.items()}, "__author__": "test"}, f, protocol=protocol)

    loaded = load_state_dict_file(path)
    assert list(loaded) == list(state)
    for key in state:
        assert loaded[key].dtype == torch.float32 and torch.equal(loaded[key], state[key])
    model = TinyModel()
    assert load_weights(model, path).is_complete
    assert_model_equals(model, state)


def test_plain_array_pickle_with_numpy_scalar(ckpt_dir: Path) -> None:
    path = ckpt_dir / "plain.pkl"
    arrays = {"w": np.arange(6, dtype=np.float64).reshape(2, 3), "n": np.int64(7), "b": np.ones(2, dtype=">f4")}
    with open(path, "wb") as f:
        pickle.dump(arrays, f, protocol=2)
    loaded = load_state_dict_file(path)
    assert loaded["w"].dtype == torch.float64 and loaded["w"].shape == (2, 3)
    assert loaded["n"].dtype == torch.int64 and int(loaded["n"]) == 7
    assert torch.equal(loaded["b"], torch.ones(2))  # big-endian data converted


def _py2_style_pickle(values: np.ndarray) -> bytes:
    """Bytes as Python 2 / numpy 1 wrote model-zoo pickles: numpy.core paths, str as bytes."""

    def short_str(b: bytes) -> bytes:
        return b"U" + bytes([len(b)]) + b

    raw = values.astype("<f4").tobytes()
    return (
        b"\x80\x02}(" + short_str(b"model") + b"}(" + short_str(b"w")
        + b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85" + short_str(b"b") + b"\x87R"
        + b"(K\x01K\x02\x85cnumpy\ndtype\n" + short_str(b"f4") + b"K\x00K\x01\x87R(K\x03" + short_str(b"<")
        + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89" + short_str(raw) + b"tb"
        + b"u" + short_str(b"__author__") + short_str(b"Detectron") + b"u."
    )  # fmt: skip


def test_python2_era_pickle_with_numpy_core_paths(ckpt_dir: Path) -> None:
    path = ckpt_dir / "py2.pkl"
    path.write_bytes(_py2_style_pickle(np.array([1.5, -2.0])))
    loaded = load_state_dict_file(path)
    assert list(loaded) == ["w"] and torch.equal(loaded["w"], torch.tensor([1.5, -2.0]))


def test_containers_in_protocol_2_pickle(ckpt_dir: Path) -> None:
    from collections import OrderedDict

    path = ckpt_dir / "containers.pkl"
    payload = OrderedDict(w=np.zeros(2, dtype=np.float32))
    with open(path, "wb") as f:
        pickle.dump({"model": payload, "__author__": "x", "meta": {"tags": {"a", "b"}, "t": (1, [2])}}, f, protocol=2)
    assert list(load_state_dict_file(path)) == ["w"]


def test_bare_state_dict_and_module_prefix(ckpt_dir: Path) -> None:
    state = random_state(2)
    bare = ckpt_dir / "bare.pth"
    torch.save(state, bare)
    assert list(load_state_dict_file(bare)) == list(state)

    wrapped = ckpt_dir / "ddp.pth"
    torch.save({"model": {f"module.{k}": v for k, v in state.items()}}, wrapped)
    loaded = load_state_dict_file(wrapped)
    assert list(loaded) == list(state)
    model = TinyModel()
    load_weights(model, wrapped)
    assert_model_equals(model, state)


def test_format_detected_by_content_not_extension(ckpt_dir: Path) -> None:
    state = random_state(3)
    pickle_named_pth = ckpt_dir / "really_a_pickle.pth"
    with open(pickle_named_pth, "wb") as f:
        pickle.dump({"model": {k: v.numpy() for k, v in state.items()}, "__author__": "x"}, f)
    zip_named_pkl = ckpt_dir / "really_a_zip.pkl"
    torch.save({"model": state}, zip_named_pkl)
    legacy = ckpt_dir / "legacy.pth"
    torch.save({"model": state}, legacy, _use_new_zipfile_serialization=False)
    for path in (pickle_named_pth, zip_named_pkl, legacy):
        loaded = load_state_dict_file(path)
        assert all(torch.equal(loaded[k], state[k]) for k in state), path


def test_dtype_cast_to_model_dtype(ckpt_dir: Path) -> None:
    state = random_state(4)
    path = ckpt_dir / "f64.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": {k: v.double().numpy() for k, v in state.items()}}, f)
    model = TinyModel()
    load_weights(model, path)
    assert all(p.dtype == torch.float32 for p in model.state_dict().values())
    assert_model_equals(model, state)

    model64 = TinyModel().double()
    apply_state_dict(model64, state)  # float32 tensors into a float64 model
    assert all(p.dtype == torch.float64 for p in model64.state_dict().values())
    assert_model_equals(model64, state)


# ---- bad paths and files ---------------------------------------------------------------------
@pytest.mark.parametrize(
    "url",
    [
        "https://www.dropbox.com/s/q98pypf96rhtd8y/vovnet39_ese_detectron2.pth?dl=1",
        "http://example.com/model.pth",
        "detectron2://ImageNetPretrained/MSRA/R-50.pkl",
    ],
)
def test_url_weights_are_refused(url: str) -> None:
    with pytest.raises(ValueError, match="is a URL; download it and pass a local file: MODEL.WEIGHTS /path/to/model.pth"):
        load_weights(TinyModel(), url)


def test_missing_and_empty_paths(ckpt_dir: Path) -> None:
    missing = ckpt_dir / "nope.pth"
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_state_dict_file(missing)
    with pytest.raises(ValueError, match="empty path"):
        load_state_dict_file("")
    with pytest.raises(ValueError, match="is a directory"):
        load_state_dict_file(ckpt_dir)
    empty = ckpt_dir / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="empty.pth.*is empty"):
        load_state_dict_file(empty)


@pytest.mark.parametrize("fmt", ["pth", "pkl"])
def test_truncated_file(ckpt_dir: Path, fmt: str) -> None:
    state = random_state(5)
    path = ckpt_dir / f"model.{fmt}"
    if fmt == "pth":
        torch.save({"model": state}, path)
    else:
        with open(path, "wb") as f:
            pickle.dump({"model": {k: v.numpy() for k, v in state.items()}}, f)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=rf"model\.{fmt}' is truncated or corrupt"):
        load_state_dict_file(path)


def test_non_checkpoint_files(ckpt_dir: Path) -> None:
    text = ckpt_dir / "notes.pth"
    text.write_text("these are not weights\n")
    png = ckpt_dir / "image.pkl"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)
    for path in (text, png):
        with pytest.raises(ValueError, match="is not a checkpoint: expected a PyTorch checkpoint") as info:
            load_state_dict_file(path)
        assert str(path) in str(info.value)


def test_pickle_without_state_dict(ckpt_dir: Path) -> None:
    path = ckpt_dir / "other.pkl"
    with open(path, "wb") as f:
        pickle.dump({"config": {"lr": 0.1}, "names": ["a"]}, f)
    with pytest.raises(ValueError, match="no 'model' state dict"):
        load_state_dict_file(path)
    with open(path, "wb") as f:
        pickle.dump([1, 2, 3], f)
    with pytest.raises(ValueError, match="holds a list"):
        load_state_dict_file(path)


# ---- code execution attempts --------------------------------------------------------------------
class _RunsCommand:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (self.command,))


class _CallsEval:
    def __init__(self, code: str) -> None:
        self.code = code

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (eval, (self.code,))


def test_malicious_pickle_is_refused(ckpt_dir: Path, capfd: pytest.CaptureFixture[str]) -> None:
    marker = ckpt_dir / "pwned.txt"
    path = ckpt_dir / "evil.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": {"w": _RunsCommand(f"echo pwned; echo pwned > '{marker}'")}, "__author__": "x"}, f)
    with pytest.raises(UnsafeCheckpointError) as info:
        load_state_dict_file(path)
    message = str(info.value)
    assert f"{os.system.__module__}.system" in message
    assert "not allowed" in message and "malicious" in message and str(path) in message
    assert isinstance(info.value, ValueError)
    assert not marker.exists()
    assert "pwned" not in capfd.readouterr().out


def test_eval_pickle_is_refused(ckpt_dir: Path) -> None:
    marker = ckpt_dir / "pwned_eval.txt"
    path = ckpt_dir / "evil2.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": _CallsEval(f"open({str(marker)!r}, 'w').write('x')")}, f, protocol=4)
    with pytest.raises(UnsafeCheckpointError, match="builtins.eval, which is not allowed"):
        load_state_dict_file(path)
    assert not marker.exists()


def test_malicious_pth_is_refused(ckpt_dir: Path) -> None:
    marker = ckpt_dir / "pwned_pth.txt"
    path = ckpt_dir / "evil.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "extra": _RunsCommand(f"echo pwned > '{marker}'")}, path)
    with pytest.raises(ValueError, match="evil.pth' is not a plain checkpoint"):
        load_state_dict_file(path)
    assert not marker.exists()


# ---- fitting the model ----------------------------------------------------------------------------
def test_wrong_checkpoint_for_model(ckpt_dir: Path) -> None:
    path = ckpt_dir / "other_model.pth"
    torch.save({"model": {"roi_heads.box.weight": torch.zeros(3)}}, path)
    with pytest.raises(ValueError, match="None of the 1 tensors .* match the model"):
        load_weights(TinyModel(), path, allow_incomplete=True)


def test_missing_keys(ckpt_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    state = random_state(6)
    partial = {k: v for k, v in state.items() if not k.startswith("head.")}
    path = ckpt_dir / "partial.pth"
    torch.save({"model": partial}, path)
    with pytest.raises(ValueError, match=r"2 model tensors missing from the checkpoint: head\.weight, head\.bias"):
        load_weights(TinyModel(), path)

    model = TinyModel()
    head_before = model.head.weight.detach().clone()
    with caplog.at_level(logging.WARNING, logger="centermask2.checkpoint"):
        report = load_weights(model, path, allow_incomplete=True)
    assert report.missing == ["head.weight", "head.bias"] and not report.is_complete
    assert torch.equal(model.head.weight, head_before)
    assert torch.equal(model.backbone[0].weight, state["backbone.0.weight"])
    assert "head.weight" in caplog.text


def test_unexpected_keys_warn(ckpt_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    state = random_state(7)
    path = ckpt_dir / "extra.pth"
    torch.save({"model": {**state, "mask_head.extra.weight": torch.zeros(2)}}, path)
    model = TinyModel()
    with caplog.at_level(logging.WARNING, logger="centermask2.checkpoint"):
        report = load_weights(model, path)
    assert report.unexpected == ["mask_head.extra.weight"] and report.is_complete
    assert "mask_head.extra.weight" in caplog.text
    assert_model_equals(model, state)


def test_shape_mismatch(ckpt_dir: Path) -> None:
    state = random_state(8)
    state["head.weight"] = torch.zeros(5, 4)
    path = ckpt_dir / "mismatch.pth"
    torch.save({"model": state}, path)
    with pytest.raises(ValueError, match=r"head\.weight \(checkpoint \[5, 4\] vs model \[2, 4\]\)"):
        load_weights(TinyModel(), path)

    model = TinyModel()
    before = model.head.weight.detach().clone()
    report = load_weights(model, path, allow_incomplete=True)
    assert report.shape_mismatch == [("head.weight", (5, 4), (2, 4))]
    assert torch.equal(model.head.weight, before)
    assert torch.equal(model.head.bias, state["head.bias"])


def test_zip_entries_declaring_far_more_than_the_model_are_refused_before_inflating(tmp_path: Path) -> None:
    """A small zip that declares huge entries (a zip bomb) is refused from its directory alone."""
    import zipfile

    model = nn.Linear(4, 2)
    path = tmp_path / "bomb.pth"
    torch.save({"model": model.state_dict()}, path)
    with zipfile.ZipFile(path, "a", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("bomb/data/zeros", b"\0" * (80 << 20))  # 80 MB of zeros: ~80 KB compressed
    assert path.stat().st_size < 1 << 20
    with pytest.raises(ValueError, match="declares .* bytes of content, far more than the model's weights need"):
        load_weights(model, path)
    # without a model to size it against, the file is read as before
    assert set(load_state_dict_file(path)) == {"weight", "bias"}


def test_named_pipes_and_files_larger_than_the_model_needs_are_refused(tmp_path: Path) -> None:
    """A pipe as MODEL.WEIGHTS would wait forever; a file far larger than the model's weights is refused
    from its size alone, whatever its format."""
    from centermask2.checkpoint import checkpoint_size_limit, read_checkpoint

    os.mkfifo(tmp_path / "pipe.pth")
    with pytest.raises(ValueError, match=r"is not a regular file \(a named pipe\)"):
        load_weights(TinyModel(), tmp_path / "pipe.pth")
    model = TinyModel()
    path = tmp_path / "big.pkl"
    with open(path, "wb") as f:
        f.truncate(checkpoint_size_limit(model) + 1)
    with pytest.raises(ValueError, match="far more than the model's weights need"):
        load_weights(model, path)
    torch.save({"model": model.state_dict()}, tmp_path / "ok.pth")
    assert set(read_checkpoint(tmp_path / "ok.pth", max_bytes=checkpoint_size_limit(model))) == {"model"}
