"""Lower an exported opset-18 graph to opset 17 or 16.

PyTorch's exporter writes opset 18. ONNX's own version converter cannot downgrade this graph
(it keeps ``noop_with_empty_axes`` on ``ReduceMean``, which opset 17 does not know), so this
module rewrites the few operators whose signature changed in opset 18 and refuses, naming the
node, anything it cannot express at the requested opset.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import InputError

__all__ = ["downgrade_opset", "NATIVE_OPSET"]

NATIVE_OPSET = 18

# operators whose `axes` moved from attribute to input in opset 18 (ReduceSum did so in 13)
_AXES_TO_ATTRIBUTE = {
    "ReduceMean",
    "ReduceMax",
    "ReduceMin",
    "ReduceProd",
    "ReduceSumSquare",
    "ReduceL1",
    "ReduceL2",
    "ReduceLogSum",
    "ReduceLogSumExp",
}
# operators introduced in opset 17 / 18 that have no older form
_NEW_IN = {
    17: {"LayerNormalization", "DFT", "BlackmanWindow", "HannWindow", "HammingWindow", "MelWeightMatrix", "STFT", "SequenceMap"},
    18: {"GroupNormalization", "CenterCropPad", "Col2Im", "BitwiseAnd", "BitwiseOr", "BitwiseXor", "BitwiseNot", "OptionalHasElement", "OptionalGetElement"},
}


def _constant_values(model: Any, name: str) -> np.ndarray | None:
    from onnx import numpy_helper

    for init in model.graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            for attr in node.attribute:
                if attr.name == "value":
                    return numpy_helper.to_array(attr.t)
                if attr.name == "value_ints":
                    return np.array(list(attr.ints), dtype=np.int64)
    return None


def _attr(node: Any, name: str) -> Any:
    from onnx import helper

    for attr in node.attribute:
        if attr.name == name:
            return helper.get_attribute_value(attr)
    return None


def _drop_attrs(node: Any, names: set[str]) -> None:
    keep = [a for a in node.attribute if a.name not in names]
    del node.attribute[:]
    node.attribute.extend(keep)


def downgrade_opset(model: Any, target: int) -> Any:
    """Rewrite an opset-18 ``ModelProto`` in place to ``target`` (16 or 17) and return it.

    Raises:
        ValueError: a node has no equivalent at ``target`` (the message names it and suggests
            ``--opset 18``).
    """
    from onnx import helper

    current = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if current is None or current == target:
        return model
    if current != NATIVE_OPSET or target not in (16, 17):
        raise InputError(f"can only lower opset {NATIVE_OPSET} to 16 or 17, not {current} to {target}")

    def fail(node: Any, why: str) -> None:
        raise InputError(f"cannot express node {node.name!r} ({node.op_type}) in opset {target}: {why}; use --opset 18")

    for node in model.graph.node:
        for version, ops in _NEW_IN.items():
            if version > target and node.op_type in ops:
                fail(node, f"{node.op_type} first appears in opset {version}")
        if node.op_type in _AXES_TO_ATTRIBUTE:
            noop = _attr(node, "noop_with_empty_axes")
            if len(node.input) > 1 and node.input[1]:
                axes = _constant_values(model, node.input[1])
                if axes is None:
                    fail(node, "its axes are computed at run time")
                node.attribute.append(helper.make_attribute("axes", [int(a) for a in np.asarray(axes).ravel()]))
                del node.input[1:]
            elif noop:
                fail(node, "noop_with_empty_axes=1 has no older form")
            _drop_attrs(node, {"noop_with_empty_axes"})
        elif node.op_type == "Resize":
            if _attr(node, "antialias") or _attr(node, "axes"):
                fail(node, "antialias / axes attributes are new in opset 18")
            policy = _attr(node, "keep_aspect_ratio_policy")
            if policy not in (None, b"stretch", "stretch"):
                fail(node, "keep_aspect_ratio_policy is new in opset 18")
            _drop_attrs(node, {"antialias", "axes", "keep_aspect_ratio_policy"})
        elif node.op_type == "Pad" and len(node.input) > 3 and node.input[3]:
            fail(node, "the axes input is new in opset 18")
        elif node.op_type == "Split" and _attr(node, "num_outputs") is not None:
            fail(node, "num_outputs is new in opset 18")
        elif node.op_type in ("ScatterND", "ScatterElements") and _attr(node, "reduction") in (b"max", b"min", "max", "min"):
            fail(node, "max/min reduction is new in opset 18")
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            entry.version = target
    _remove_unused_initializers(model)
    return model


def _remove_unused_initializers(model: Any) -> None:
    used = {name for node in model.graph.node for name in node.input}
    used |= {o.name for o in model.graph.output}
    keep = [init for init in model.graph.initializer if init.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
