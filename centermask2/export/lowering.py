"""One trace instead of two: lower the captured graph to operators the ONNX registry translates.

``torch.onnx.export(..., dynamo=True)`` traces the model twice: once to capture it (torch.export),
then once more to decompose the captured graph (``ExportedProgram.run_decompositions``), a full
re-trace with symbolic shapes that costs as much as the capture (16 s each for a V-39 model on one
core of an AVX2 EPYC) even when only a handful of nodes need decomposing. Our models leave only a
few such nodes - in-place ReLUs and ReLU6s, frozen batch norms, dtype casts, a transposed
convolution, an ``adaptive_avg_pool2d`` to 1x1, ``&`` and ``scalar - tensor`` - and each has an
equivalent
that the registry translates (the same one the decomposition produces). :func:`lowered_in_place`
rewrites those nodes in the captured graph; when every node is then one the registry translates,
the decomposition is skipped. Any other graph (an operator not listed here, an in-place op whose
input is used elsewhere, control flow) goes through the exporter's own decomposition unchanged.

The hook is :func:`decompose_only_where_needed`, a context manager around ``torch.onnx.export``;
it reaches into the exporter's private ``_fx_passes`` module (PyTorch 2.13's), and leaves the
exporter as it is when that module is not there. Measured with ``tools/benchmark_export.py``.
"""

from __future__ import annotations

import contextlib
import logging
import operator
import threading
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import fx
from torch.export.graph_signature import TensorArgument

logger = logging.getLogger(__name__)

_aten = torch.ops.aten

#: nodes the exporter removes itself after the decomposition (remove_assertion_nodes)
_ASSERTIONS = {
    _aten._assert_scalar.default,
    _aten._assert_tensor_metadata.default,
    _aten.sym_constrain_range_for_size.default,
    _aten._assert_async.default,
    _aten._assert_async.msg,
}


def _call(graph: fx.Graph, old: fx.Node, target: Any, args: tuple, kwargs: dict | None = None) -> fx.Node:
    """A node calling ``target`` before ``old``, with ``old``'s metadata (scope, stack trace)."""
    with graph.inserting_before(old):
        node = graph.call_function(target, args, kwargs or {})
    node.meta = dict(old.meta)
    return node


def _fake_value(node: fx.Node) -> Any:
    """``node``'s output computed on its inputs' fake values (for a node the tracer did not see)."""
    from torch._guards import detect_fake_mode
    from torch.utils import _pytree as pytree

    def val(a: Any) -> Any:
        return a.meta["val"] if isinstance(a, fx.Node) else a

    args = fx.node.map_aggregate(node.args, val)
    kwargs = fx.node.map_aggregate(node.kwargs, val)
    fake_mode = detect_fake_mode([a for a in pytree.tree_leaves((args, kwargs)) if torch.is_tensor(a)])
    with fake_mode if fake_mode is not None else contextlib.nullcontext():
        return node.target(*args, **kwargs)


#: in-place activations -> the same out of place
_OUT_OF_PLACE = {_aten.relu_.default: _aten.relu.default, _aten.hardtanh_.default: _aten.hardtanh.default}


def _out_of_place(graph: fx.Graph, node: fx.Node) -> fx.Node:
    return _call(graph, node, _OUT_OF_PLACE[node.target], tuple(node.args), dict(node.kwargs))


def _in_place_applies(node: fx.Node) -> bool:
    # out of place is the same only when nothing else reads the tensor the in-place op wrote
    source = node.args[0]
    return isinstance(source, fx.Node) and source.op == "call_function" and len(source.users) == 1


def _batch_norm(graph: fx.Graph, node: fx.Node) -> fx.Node:
    x, weight, bias, mean, var, _, momentum, eps = node.args[:8]
    args = (x, weight, bias, mean, var, momentum, eps)
    norm = _call(graph, node, _aten._native_batch_norm_legit_no_training.default, args)
    norm.meta["val"] = _fake_value(norm)
    return _call(graph, node, operator.getitem, (norm, 0))


def _to_dtype_options(node: fx.Node) -> dict[str, Any]:
    return dict(zip(("non_blocking", "copy", "memory_format"), node.args[2:])) | dict(node.kwargs)


def _to_dtype_applies(node: fx.Node) -> bool:
    options = _to_dtype_options(node)
    return isinstance(node.args[0], fx.Node) and not options.get("copy") and options.get("memory_format") is None


def _to_dtype(graph: fx.Graph, node: fx.Node) -> fx.Node:
    x, dtype = node.args[:2]
    if x.meta["val"].dtype == dtype:
        return x  # a cast to the dtype it has: the tensor itself
    return _call(graph, node, _aten._to_copy.default, (x,), {"dtype": dtype})


def _and(graph: fx.Graph, node: fx.Node) -> fx.Node:
    return _call(graph, node, _aten.bitwise_and.Tensor, tuple(node.args))


def _rsub_applies(node: fx.Node) -> bool:
    return (node.args[2] if len(node.args) > 2 else node.kwargs.get("alpha", 1)) == 1


def _rsub(graph: fx.Graph, node: fx.Node) -> fx.Node:
    x, other = node.args[:2]
    negated = _call(graph, node, _aten.neg.default, (x,))
    negated.meta["val"] = _fake_value(negated)
    return _call(graph, node, _aten.add.Tensor, (negated, other))  # -x + other: exactly other - x


def _adaptive_avg_pool2d(graph: fx.Graph, node: fx.Node) -> fx.Node:
    return _call(graph, node, _aten.mean.dim, (node.args[0], [-1, -2], True))


def _conv_transpose2d(graph: fx.Graph, node: fx.Node) -> fx.Node:
    names = ("input", "weight", "bias", "stride", "padding", "output_padding", "groups", "dilation")
    defaults = {"bias": None, "stride": 1, "padding": 0, "output_padding": 0, "groups": 1, "dilation": 1}
    given = defaults | dict(zip(names, node.args)) | dict(node.kwargs)

    def pair(v: Any) -> list:
        return list(v) if isinstance(v, (list, tuple)) else [v, v]

    args = (given["input"], given["weight"], given["bias"], pair(given["stride"]), pair(given["padding"]),
            pair(given["dilation"]), True, pair(given["output_padding"]), given["groups"])
    return _call(graph, node, _aten.convolution.default, args)


def _always(node: fx.Node) -> bool:
    return True


#: operator -> (whether the rewrite applies to a node, the rewrite: adds the replacement nodes
#: before the node, returns the one that replaces it); each has the value the node had
_REWRITES: dict[Any, tuple[Callable[[fx.Node], bool], Callable[[fx.Graph, fx.Node], fx.Node]]] = {
    _aten.relu_.default: (_in_place_applies, _out_of_place),
    _aten.hardtanh_.default: (_in_place_applies, _out_of_place),
    _aten.batch_norm.default: (lambda node: len(node.args) >= 8 and not node.args[5], _batch_norm),  # [5]: training
    _aten.to.dtype: (_to_dtype_applies, _to_dtype),
    _aten.__and__.Tensor: (_always, _and),
    _aten.rsub.Scalar: (_rsub_applies, _rsub),
    _aten.adaptive_avg_pool2d.default: (lambda node: list(node.args[1]) == [1, 1], _adaptive_avg_pool2d),
    _aten.conv_transpose2d.input: (_always, _conv_transpose2d),
}


def _translatable(node: fx.Node, implemented: set) -> bool:
    if node.op != "call_function":
        return True
    target = node.target
    # not an operator: getitem and the arithmetic on symbolic sizes
    return target in implemented or target in _ASSERTIONS or not isinstance(target, torch._ops.OperatorBase)


def lowered_in_place(program: torch.export.ExportedProgram, implemented: set) -> bool:
    """Rewrite ``program``'s graph so that every node is one ``implemented`` translates.

    Args:
        program: a captured (training-IR) program; its graph is changed only when this succeeds.
        implemented: the ``OpOverload`` s the ONNX registry translates.

    Returns:
        True when the graph now needs no decomposition; False (graph untouched) otherwise.
    """
    module = program.graph_module
    if any(isinstance(m, fx.GraphModule) for name, m in module.named_modules() if name):
        logger.debug("full decomposition: the graph has subgraphs (control flow)")
        return False
    graph = module.graph
    to_rewrite = []
    for node in graph.nodes:
        if _translatable(node, implemented):
            continue
        if node.target not in _REWRITES or not _REWRITES[node.target][0](node):
            logger.debug("full decomposition: no rewrite of %s (%s)", node.target, node.name)
            return False
        to_rewrite.append(node)
    renamed: dict[str, fx.Node] = {}
    for old in to_rewrite:
        new = _REWRITES[old.target][1](graph, old)
        if new not in old.all_input_nodes:  # not a cast that was the tensor itself
            new.meta["val"] = old.meta["val"]
        old.replace_all_uses_with(new)
        renamed[old.name] = new
        graph.erase_node(old)
    for spec in program.graph_signature.output_specs:  # outputs are named after their nodes
        if isinstance(spec.arg, TensorArgument) and spec.arg.name in renamed:
            spec.arg.name = renamed[spec.arg.name].name
    graph.lint()
    module.recompile()
    return True


_hook_lock = threading.Lock()
_hook_users = 0
_exporter_decompose: Callable | None = None


@contextlib.contextmanager
def decompose_only_where_needed() -> Iterator[None]:
    """Within this context, ``torch.onnx.export`` skips its decomposition re-trace for graphs that
    :func:`lowered_in_place` makes translatable (see the module doc). Safe to nest and to enter
    from several threads: the exporter is restored when the last one leaves."""
    global _hook_users, _exporter_decompose
    try:
        from torch.onnx._internal.exporter import _decomp, _fx_passes
        _fx_passes.decompose_with_registry  # noqa: B018 - present in the PyTorch this was written for
    except (ImportError, AttributeError):  # another PyTorch: the exporter as it is
        yield
        return

    def decompose(program: torch.export.ExportedProgram, registry: Any) -> torch.export.ExportedProgram:
        implemented = set(_decomp.get_onnx_implemented_overloads(registry))
        if lowered_in_place(program, implemented):
            logger.debug("graph lowered in place: no decomposition re-trace")
            return program
        return _exporter_decompose(program, registry)

    with _hook_lock:
        if _hook_users == 0:
            _exporter_decompose = _fx_passes.decompose_with_registry
            _fx_passes.decompose_with_registry = decompose
        _hook_users += 1
    try:
        yield
    finally:
        with _hook_lock:
            _hook_users -= 1
            if _hook_users == 0:
                _fx_passes.decompose_with_registry = _exporter_decompose
