"""centermask2.engine.loop, .executors and .resume: the image -> results stage with a fake backend."""

import json

import numpy as np
import pytest
from PIL import Image

from centermask2.data import InputSpec, list_images
from centermask2.engine.executors import Job, LocalExecutor, PoolExecutor
from centermask2.engine.loop import PARTIAL_NAME, RESULTS_NAME, run_inference, run_to_folder
from centermask2.engine.resume import ImageOutput, PartialResults
from centermask2.engine.sources import ModelSource
from centermask2.errors import BackendError, InputError

SPEC = InputSpec(min_size=32, max_size=64, size_divisibility=32)


def _source(backend, batch_size=1):
    return ModelSource(backend, SPEC, batch_size, [10, 20, 30], ["a", "b", "c"], "fake")


class FakeBackend:
    """One detection per image: a box over the top-left quarter, class = batch position."""

    input_dtype = "uint8"

    def __init__(self):
        self.batches = []

    def run(self, inputs):
        images, sizes = inputs["images"], inputs["image_sizes"]
        b = images.shape[0]
        self.batches.append((images.shape, sizes.tolist()))
        boxes = np.zeros((b, 2, 4), np.float32)
        boxes[:, 0] = [[0, 0, w / 2, h / 2] for h, w in sizes]
        return {
            "boxes": boxes,
            "scores": np.full((b, 2), 0.9, np.float32),
            "classes": np.tile(np.arange(b)[:, None], (1, 2)).astype(np.int64),
            "masks": np.ones((b, 2, 28, 28), np.float32),
            "mask_scores": np.full((b, 2), 0.8, np.float32),
            "num_detections": np.ones(b, np.int64),
        }


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for i, (w, h) in enumerate([(40, 30), (64, 48), (30, 40)], start=1):
        Image.new("RGB", (w, h), (i, 2 * i, 3 * i)).save(folder / f"{i:012d}.png")
    (folder / f"{4:012d}.png").write_bytes(b"not a png")
    return folder


def test_batches_padding_and_unreadable_images(images):
    backend = FakeBackend()
    records = list_images(images)
    results, summary = run_inference(_source(backend, 2), records, progress=False)
    # image 1 (30x40 -> 32x43) and 2 (48x64 -> 32x43) share a batch padded to 32x64; 3 alone; 4 unreadable
    # (calls overlap with reading: the smaller second batch may reach the model first)
    assert sorted(shape for shape, _ in backend.batches) == [(1, 3, 64, 32), (2, 3, 32, 64)]
    assert [r["image_id"] for r in results] == [1, 2, 3]
    assert [r["category_id"] for r in results] == [10, 20, 10]
    assert results[0]["bbox"] == pytest.approx([0, 0, 20, 15], abs=0.5)  # back in original pixels
    assert summary.num_images == 3 and summary.num_detections == 3 and not summary.ok
    assert summary.failed[0][0] == f"{4:012d}.png"
    assert "3 images (1 unreadable, skipped), 3 detections" in summary.format()


def test_corrupt_model_outputs_are_a_named_error(images):
    """NaN boxes (a broken export or int8 model) stop the run with a one-line error, not a traceback."""

    class NaNBackend(FakeBackend):
        def run(self, inputs):
            out = super().run(inputs)
            out["boxes"][:] = np.nan
            return out

    with pytest.raises(BackendError, match=r"outputs for image 1 \(000000000001.png\): boxes of the first 1 .*NaN"):
        run_inference(_source(NaNBackend()), list_images(images), progress=False)


@pytest.mark.parametrize("count", [-1, 1000])
def test_a_count_out_of_range_stops_the_run(images, count):
    """A negative num_detections used to be a slice (every row but the last: wrong results, exit 0)."""

    class BadCount(FakeBackend):
        def run(self, inputs):
            out = super().run(inputs)
            out["num_detections"][:] = count
            return out

    with pytest.raises(BackendError, match=f"num_detections is {count}, outside \\[0, "):
        run_inference(_source(BadCount()), list_images(images), progress=False)


def test_resume_keeps_done_images_and_runs_the_rest(images):
    records = list_images(images)[:3]
    done = {1: ImageOutput([{"image_id": 1, "marker": True}])}
    backend = FakeBackend()
    results, summary = run_inference(_source(backend), records, done=done, progress=False)
    assert results[0] == {"image_id": 1, "marker": True} and [r["image_id"] for r in results] == [1, 2, 3]
    assert len(backend.batches) == 2 and summary.num_resumed == 1 and summary.num_images == 2


def test_run_to_folder_writes_results_and_removes_progress(images, tmp_path):
    source = _source(FakeBackend())
    records = list_images(images)[:3]
    results, summary, path = run_to_folder(source, records, tmp_path / "out", progress=False)
    assert path == tmp_path / "out" / RESULTS_NAME and json.loads(path.read_text()) == results
    assert not (tmp_path / "out" / PARTIAL_NAME).exists()


def test_partial_results_survive_a_torn_last_line_and_refuse_another_run(tmp_path, images):
    rec = list_images(images)[0]
    partial = PartialResults(tmp_path / PARTIAL_NAME, identity={"model": "A"})
    partial.start({})
    partial.append(rec, ImageOutput([{"image_id": 1}], panoptic={"file_name": "000000000001.png"}))
    partial.close()
    with open(tmp_path / PARTIAL_NAME, "a") as f:
        f.write('{"image_id": 2, "rec')  # killed mid-write
    loaded = PartialResults(tmp_path / PARTIAL_NAME, identity={"model": "A"}).load()
    assert loaded == {1: ImageOutput([{"image_id": 1}], panoptic={"file_name": "000000000001.png"})}
    with pytest.raises(InputError, match="another run"):
        PartialResults(tmp_path / PARTIAL_NAME, identity={"model": "B"}).load()


class _Square(Job):
    """A job without a model: the item squared, and a failure for a negative item."""

    def prepare(self, item):
        if item < 0:
            raise InputError(f"negative item {item}")
        return item * item


def test_executors_give_every_item_once_with_its_index():
    """The in-process executor and the process pool map a job the same way (in any order); the
    pool refuses a model's job, and a job's own error reaches the caller as it is."""
    items = list(range(7))
    local = {d.index: d.value for d in LocalExecutor().map(_Square(), items)}
    with PoolExecutor(2, start_method="spawn") as pool:
        pooled = {d.index: d.value for d in pool.map(_Square(), items)}
        with pytest.raises(InputError, match="without a model"):
            next(pool.map(_Square(), items, _source(FakeBackend())))
        with pytest.raises(InputError, match="negative item -3"):
            list(pool.map(_Square(), [1, -3]))
    assert local == pooled == {i: i * i for i in items}
    with pytest.raises(InputError, match="--workers must be >= 1"):
        PoolExecutor(0)


@pytest.mark.parametrize(("content", "message"), [
    ('{"image_id": 1, "records": [{"image_id": 1}]}\n', "has no run identity on its first line"),
    ('{"identity": {"model": "A"}}\n{"image_id": 1, "rec\n{"image_id": 2, "records": []}\n',
     "line 2 is not a valid progress entry"),
    ('{"identity": {"model": "A"}}\n{"image_id": 1, "records": [{"image_id": 2}]}\n',
     "line 2 has 'records' that are not this image's"),
    ('{"identity": {"model": "A"}}\n{"image_id": 1.5, "records": []}\n', "line 2 has no integer 'image_id'"),
    ('{"identity": {"model": "A"}}\n{"image_id": 1, "records": [NaN]}\n', "NaN is not a JSON number"),
])
def test_progress_files_this_run_did_not_write_are_refused(tmp_path, content, message):
    (tmp_path / PARTIAL_NAME).write_text(content)
    with pytest.raises(InputError, match=message):
        PartialResults(tmp_path / PARTIAL_NAME, identity={"model": "A"}).load()


def test_a_progress_file_that_is_a_link_is_not_followed(tmp_path):
    (tmp_path / "elsewhere.jsonl").write_text('{"identity": {"model": "A"}}\n')
    (tmp_path / PARTIAL_NAME).symlink_to(tmp_path / "elsewhere.jsonl")
    with pytest.raises(InputError, match="is a symbolic link"):
        PartialResults(tmp_path / PARTIAL_NAME, identity={"model": "A"}).load()


class _Gated(Job):
    """A model job whose steps sleep, recording how many model calls run at once."""

    def __init__(self):
        import threading

        self.lock = threading.Lock()
        self.running = 0
        self.most = 0

    def prepare(self, item):
        if item == "bad":
            raise InputError("unreadable item")
        import time

        time.sleep(0.01)
        return item

    def infer(self, backend, prepared):
        import time

        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
        time.sleep(0.02)
        with self.lock:
            self.running -= 1
        return prepared * 10

    def finish(self, item, inferred):
        return inferred + 1


class _Parallel:
    """A backend that allows ``n`` calls at once."""

    input_dtype = "uint8"

    def __init__(self, n):
        self.parallel_requests = n


@pytest.mark.parametrize("requests", [1, 3])
def test_overlapped_steps_give_the_same_results_and_respect_the_model_gate(requests):
    """LocalExecutor overlaps reading and post-processing with the model: every item once, with the
    value of the sequential run, never more model calls at once than the backend allows; a step's
    error reaches the caller as it is."""
    items = list(range(12))
    source = _source(_Parallel(requests))
    sequential = {d.index: d.value for d in LocalExecutor(overlap=False).map(_Gated(), items, source)}
    job = _Gated()
    done = list(LocalExecutor().map(job, items, source))
    assert {d.index: d.value for d in done} == sequential == {i: i * 10 + 1 for i in items}
    assert sorted(d.index for d in done) == items
    assert job.most == requests  # the gate holds, and the calls do overlap up to it
    assert all(d.model_s >= 0.015 for d in done)  # the model call alone, not the wait at the gate
    with pytest.raises(InputError, match="unreadable item"):
        list(LocalExecutor().map(_Gated(), [1, 2, "bad", 4], source))


def test_the_image_stage_gives_the_same_files_with_and_without_overlap(images, tmp_path):
    source = _source(FakeBackend(), batch_size=2)
    records = list_images(images)
    out = {}
    for overlap in (False, True):
        run_to_folder(source, records, tmp_path / str(overlap), executor=LocalExecutor(overlap=overlap),
                      progress=False)
        out[overlap] = (tmp_path / str(overlap) / RESULTS_NAME).read_bytes()
    assert out[True] == out[False] and json.loads(out[True])
