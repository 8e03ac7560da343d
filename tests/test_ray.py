"""tester.py --ray (and the .bin stages on Ray): byte-for-byte the results of a single-process run,
for PyTorch and ONNX Runtime, also when an actor is killed mid-run or the driver stops and the run
is resumed; the missing-extra error and the flag checks.

One local Ray instance (2 CPUs) serves the whole module; the golden Lite case keeps it small.
"""

import json
import logging
import os
import shutil
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from centermask2.cli import tester
from centermask2.engine.sources import SourceRecipe
from centermask2.errors import InputError, MissingDependencyError
from golden import CASES, CONFIGS, LITE, case_info, write_checkpoint

RESULTS = "coco_instances_results.json"


@pytest.fixture(scope="module")
def cluster():
    """A local Ray instance for every test of the module (the runs use it instead of starting their own)."""
    from centermask2.engine.ray_executor import ray_session

    with ray_session(None, num_cpus=2) as cpus:
        yield cpus


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    """In-process single-process runs set torch's threads (--threads 1); later tests keep theirs."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ray runs")  # a path with a space


@pytest.fixture(scope="module")
def checkpoint(work) -> Path:
    return write_checkpoint(LITE, work / "ckpt.pth")


@pytest.fixture(scope="module")
def models(checkpoint, lite_dynamic):
    """The Lite case for each backend: its checkpoint, and the session's dynamic ONNX export of it."""
    return _Models(checkpoint, lite_dynamic)


@dataclass(frozen=True)
class _Models:
    checkpoint: Path
    onnx: Path

    def args(self, backend: str) -> tuple[list[str], list[str]]:
        """(options, trailing overrides) of tester.py for ``backend`` on the Lite case."""
        if backend == "torch":
            return (["--backend", "torch", "--config-file", str(CONFIGS / case_info(LITE)["config"])],
                    ["MODEL.WEIGHTS", str(self.checkpoint), "MODEL.DEVICE", "cpu"])
        return ["--backend", backend, "--model", str(self.onnx)], []


@pytest.fixture(scope="module")
def four_images(work) -> Path:
    """Four images (copies of the two golden ones), for killed and resumed runs."""
    folder = work / "four images"
    folder.mkdir()
    src = sorted((CASES[LITE] / "images").iterdir())
    for i in range(4):
        shutil.copy(src[i % 2], folder / f"{i + 1:012d}.png")
    return folder


def _run(out: Path, backend: str, models: _Models, *extra: str, images: Path | None = None,
         annotations: bool = True) -> int:
    options, overrides = models.args(backend)
    data = ["--images", str(images or CASES[LITE] / "images")]
    if annotations:
        data += ["--coco-json", str(CASES[LITE] / "annotations_gt.json")]
    return tester.main([*extra, *options, *data, "--output-dir", str(out), "--threads", "1", "--no-progress",
                        *overrides])


@pytest.mark.parametrize(("backend", "actors"), [("torch", 2), ("onnx", 1), ("openvino", 1)])
def test_ray_results_are_byte_identical(cluster, work, models, backend, actors, caplog):
    """The golden case on Ray: the same results file, byte for byte, and the same metrics."""
    caplog.set_level(logging.INFO)
    single, on_ray = work / f"{backend} single", work / f"{backend} ray"
    assert _run(single, backend, models) == 0
    caplog.clear()
    assert _run(on_ray, backend, models, "--ray", "--ray-actors", str(actors)) == 0
    assert (on_ray / RESULTS).read_bytes() == (single / RESULTS).read_bytes()
    assert json.loads((on_ray / "metrics.json").read_text()) == json.loads((single / "metrics.json").read_text())
    assert f"Ray: {actors} actor(s) x 1 thread(s)" in caplog.text
    assert not (on_ray / "coco_instances_results.partial.jsonl").exists()


class _CrashOnce:
    """A backend that SIGKILLs its own process in the middle of its second call, once per test
    (the first actor to get there creates ``marker``); the other calls run the real backend."""

    def __init__(self, backend, marker: str) -> None:
        self.backend, self.marker, self.calls = backend, marker, 0
        self.input_dtype = backend.input_dtype

    def run(self, inputs):
        self.calls += 1
        if self.calls == 2:
            try:
                os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL))
            except FileExistsError:
                pass
            else:
                os.kill(os.getpid(), signal.SIGKILL)
        return self.backend.run(inputs)


@dataclass(frozen=True)
class _CrashingRecipe(SourceRecipe):
    """The recipe's source, its backend wrapped in :class:`_CrashOnce`."""

    marker: str = ""

    def build(self):
        source = super().build()
        source.backend = _CrashOnce(source.backend, self.marker)
        return source


def test_killed_actor_is_replaced_and_its_images_redone(cluster, work, models, lite_dynamic):
    """The actor killed (SIGKILL) in the middle of its second batch is restarted and the batch redone:
    the results file is the single-process one, byte for byte."""
    import ray.cloudpickle

    from centermask2.data.catalog import list_images
    from centermask2.engine.loop import run_to_folder
    from centermask2.engine.ray_executor import RayExecutor
    from centermask2.engine.sources import open_model

    images = CASES[LITE] / "images"
    single = work / "kill single"
    assert _run(single, "onnx", models, images=images, annotations=False) == 0

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # actors cannot import this test module
    marker = work / "killed once"
    source = open_model(lite_dynamic, threads=1)
    source.recipe = _CrashingRecipe(source.recipe.model, source.recipe.runtime, source.recipe.options,
                                    marker=str(marker))
    with RayExecutor(actors=1) as executor:
        _, summary, path = run_to_folder(source, list_images(images), work / "kill ray", progress=False,
                                         executor=executor)
    assert marker.exists(), "the actor was not killed"
    assert path.read_bytes() == (single / RESULTS).read_bytes()
    assert summary.num_images == 2
    assert "Ray: 1 actor(s) x 1 thread(s); 1 replaced after a failure" in summary.format()


def _stop_after(monkeypatch, images: int) -> None:
    """The driver stops (Ctrl-C) once ``images`` images' records are persisted."""
    from centermask2.engine import resume

    append = resume.PartialResults.append
    count = []

    def append_then_stop(self, record, records):
        append(self, record, records)
        count.append(record.image_id)
        if len(count) == images:
            raise KeyboardInterrupt

    monkeypatch.setattr(resume.PartialResults, "append", append_then_stop)


def test_resume_on_ray_skips_finished_images(cluster, work, models, caplog):
    """A run stopped after one image, resumed with --ray: the cluster runs only the other one, and the
    results are byte for byte those of an uninterrupted run (the identity is the same with and without Ray)."""
    single = work / "torch single"  # test_ray_results_are_byte_identical[torch]'s
    if not (single / RESULTS).is_file():
        assert _run(single, "torch", models) == 0
    out = work / "resume ray"
    with pytest.MonkeyPatch.context() as patch:
        _stop_after(patch, 1)
        assert _run(out, "torch", models) == 130
    caplog.set_level(logging.INFO)
    assert _run(out, "torch", models, "--ray", "--ray-actors", "1", "--resume") == 0
    assert "Resuming: 1 of 2 image(s) already done" in caplog.text
    assert (out / RESULTS).read_bytes() == (single / RESULTS).read_bytes()


@pytest.mark.slow
def test_ray_driver_stopped_then_resumed_on_ray(cluster, work, models, four_images, caplog):
    """The Ray driver stops after two images (Ctrl-C): their records are persisted, and --resume on
    Ray runs only the other two."""
    single = work / "resume single"
    assert _run(single, "torch", models, images=four_images, annotations=False) == 0
    out = work / "resume ray 4"
    with pytest.MonkeyPatch.context() as patch:
        _stop_after(patch, 2)
        assert _run(out, "torch", models, "--ray", "--ray-actors", "2", images=four_images,
                    annotations=False) == 130
    assert not (out / RESULTS).exists()
    caplog.set_level(logging.INFO)
    assert _run(out, "torch", models, "--ray", "--ray-actors", "2", "--resume", images=four_images,
                annotations=False) == 0
    assert "Resuming: 2 of 4 image(s) already done" in caplog.text
    assert (out / RESULTS).read_bytes() == (single / RESULTS).read_bytes()


def test_missing_ray_is_a_clear_error(monkeypatch, tmp_path, caplog):
    from centermask2.engine.ray_executor import require_ray

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    with pytest.raises(MissingDependencyError, match=r'pip install -e "\.\[ray\]"'):
        require_ray()
    # --ray just before the overrides: argparse gives it MODEL.WEIGHTS, which is taken back
    assert tester.main(["--config-file", str(CONFIGS / case_info(LITE)["config"]), "--images",
                        str(CASES[LITE] / "images"), "--output-dir", str(tmp_path / "out"), "--ray",
                        "MODEL.WEIGHTS", str(tmp_path / "unused.pth")]) == 2
    assert 'error: Ray is not installed: pip install -e ".[ray]"' in caplog.text


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--ray-actors", "2"], "--ray-actors is for --ray"),
        (["--ray", "head-node"], "is not a cluster address"),
        (["--ray", "--ray-actors", "3"], "needs 3 CPUs but the Ray cluster has 2"),
    ],
)
def test_ray_flags_are_checked(cluster, tmp_path, models, caplog, extra, message):
    assert _run(tmp_path / "out", "torch", models, *extra) == 2
    assert message in caplog.text


def test_address_forms():
    from centermask2.engine.ray_executor import check_address

    assert check_address("") is None and check_address(None) is None
    for address in ("auto", "ray://head.example:10001", "10.0.0.5:6379"):
        assert check_address(address) == address
    with pytest.raises(InputError, match="auto, ray://host:port or host:port"):
        check_address("head node")


def _files(folder: Path) -> dict[str, bytes]:
    """Every file's bytes by relative path (the folder's own path, in bin_info.info, as ``FOLDER``)."""
    return {str(p.relative_to(folder)): p.read_bytes().replace(str(folder).encode(), b"FOLDER")
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_bin_pipeline_on_ray_writes_the_same_files(cluster, work, lite_static):
    """preprocess_inputs_to_bin.py --ray and tester.py --bins --ray: the same bins, info files, output
    bins and manifest as without Ray."""
    from centermask2.cli import preprocess

    root = CASES[LITE]
    model = lite_static  # shared with the offline pipeline tests
    common = ["--images", str(root / "images"), "--coco-json", str(root / "annotations_gt.json"),
              "--model", str(model), "--no-progress"]
    assert preprocess.main([*common, "--output", str(work / "bins single")]) == 0
    assert preprocess.main([*common, "--output", str(work / "bins ray"), "--ray"]) == 0
    assert _files(work / "bins ray") == _files(work / "bins single")

    run = ["--model", str(model), "--bins", str(work / "bins single"), "--threads", "1", "--no-progress"]
    assert tester.main([*run, "--output", str(work / "raw single")]) == 0
    assert tester.main([*run, "--output", str(work / "raw ray"), "--ray", "--ray-actors", "2"]) == 0
    assert _files(work / "raw ray") == _files(work / "raw single")
