"""The shipped sample model (tools/sample_model): its held-out figures hold, and PyTorch, ONNX
Runtime and the .bin pipeline (one static export) agree on them within 0.1 AP (the dynamic
export's figures are in metrics.json; the golden tests cover dynamic exports)."""

import json
from pathlib import Path

import pytest

from centermask2.cli import export_onnx, postprocess, preprocess, tester
from golden import ROOT

MODEL_DIR = ROOT / "tools" / "sample_model"
CONFIG = ROOT / "configs" / "sample" / "shapes_lite_V_19_slim_dw.yaml"
SHIPPED = json.loads((MODEL_DIR / "metrics.json").read_text())


@pytest.fixture(scope="module")
def held_out(tmp_path_factory) -> tuple[Path, Path]:
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_shapes_dataset", ROOT / "tools" / "make_shapes_dataset.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path_factory.mktemp("shapes")
    ann = mod.make_split(out, "val", int(SHIPPED["images"]), int(SHIPPED["dataset_seed"]), progress=False)
    return out / "val" / "images", ann


def _ap(folder: Path) -> dict[str, float]:
    metrics = json.loads((folder / "metrics.json").read_text())
    return {task: metrics[task]["AP"] for task in ("bbox", "segm")}


def test_every_path_gives_the_shipped_figures(held_out, tmp_path):
    images, ann = held_out
    weights = str(MODEL_DIR / "model_final.pth")
    common = ["--images", str(images), "--coco-json", str(ann), "--no-progress"]
    assert tester.main(["--backend", "torch", "--config-file", str(CONFIG), *common,
                        "--output-dir", str(tmp_path / "torch"), "MODEL.WEIGHTS", weights]) == 0
    torch_ap = _ap(tmp_path / "torch")
    for task in ("bbox", "segm"):
        assert abs(torch_ap[task] - SHIPPED[task]["AP"]) <= 0.1, (task, torch_ap, SHIPPED[task]["AP"])

    static = tmp_path / "static.onnx"
    assert export_onnx.main(["--config-file", str(CONFIG), "--output", str(static), "--input-size", "384x384",
                             "--input-dtype", "uint8", "--coco-json", str(ann), "MODEL.WEIGHTS", weights]) == 0
    # ONNX Runtime on the images (the static model pads each to 384x384), then the .bin pipeline
    assert tester.main(["--backend", "onnx", "--model", str(static), *common,
                        "--output-dir", str(tmp_path / "onnx")]) == 0
    assert preprocess.main(["--model", str(static), "--images", str(images), "--coco-json", str(ann),
                            "--output", str(tmp_path / "bins"), "--no-progress"]) == 0
    assert tester.main(["--model", str(static), "--bins", str(tmp_path / "bins"), "--output", str(tmp_path / "raw"),
                        "--no-progress"]) == 0
    assert postprocess.main(["--outputs", str(tmp_path / "raw"), "--info", str(tmp_path / "bins" / "bin_info.json"),
                             "--model", str(static), "--coco-json", str(ann), "--output-dir", str(tmp_path / "bin"),
                             "--no-progress"]) == 0
    for path in ("onnx", "bin"):
        ap = _ap(tmp_path / path)
        for task in ("bbox", "segm"):
            assert abs(ap[task] - torch_ap[task]) <= 0.1, (path, task, ap, torch_ap)
