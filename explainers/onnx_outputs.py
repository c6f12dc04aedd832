"""What an ONNX graph does after its tree-ensemble node: the output's link function.

Converters write the link either as the tree node's ``post_transform`` or as
operators after it: onnxmltools writes LightGBM's Poisson, Tweedie and Gamma models
as ``Exp``, and XGBoost's as ``Exp`` then ``Mul`` by the base score. Those are
recognised (the Mul folds into the margin as ``+ log(c)``, so the margin is the log
of the prediction); operators that only reshape, rename or retype the output pass.
Anything else after the trees would make the explanation be of a different output
than the model's, so it is refused with a message naming the node.

Only the score output is followed; what consumes a classifier's label output does not
change the scores that are explained.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np

from explainers.ensemble import Transform
from explainers.errors import ModelLoadError

_PASS_AFTER = frozenset(
    {"Identity", "Cast", "ZipMap", "Reshape", "Flatten", "Squeeze", "Unsqueeze"}
)
_LINK_OPS: dict[str, Transform] = {"Exp": "exp", "Sigmoid": "logistic", "Softmax": "softmax"}


@dataclass(frozen=True)
class OutputChain:
    """The link the operators after the trees apply, if any, and its constant factor."""

    link: Transform | None  # None: no operator link (the node's post_transform holds)
    log_scale: float  # log of the positive constant an Exp's output is multiplied by
    output: str | None  # the graph output the score reaches, if it reaches one


def _constants(graph: Any) -> dict[str, Any]:
    from onnx import helper, numpy_helper

    out = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for n in graph.node:
        if n.op_type == "Constant" and n.attribute:
            v = helper.get_attribute_value(n.attribute[0])
            out[n.output[0]] = numpy_helper.to_array(v) if hasattr(v, "dims") else np.asarray(v)
    return out


def _name(node: Any) -> str:
    return f"{node.op_type} node {node.name!r}" if node.name else f"{node.op_type} node"


def output_chain(model: Any, tree: Any, post_transform: str) -> OutputChain:
    """Follow the tree node's score output to the graph's outputs; raise ModelLoadError
    naming the first operator that is not a recognised link or a pass-through."""
    graph = model.graph
    consts = _constants(graph)
    consumers: dict[str, list[Any]] = defaultdict(list)
    for n in graph.node:
        if n.op_type == "Constant":
            continue
        for i in n.input:
            consumers[i].append(n)
    outputs = {o.name for o in graph.output}
    classifier = tree.op_type == "TreeEnsembleClassifier"
    start = tree.output[1] if classifier and len(tree.output) > 1 else tree.output[0]
    ends: set[tuple[Transform | None, float, str]] = set()
    # (value name, link so far, log scale so far); graphs are acyclic, so this ends.
    todo: list[tuple[str, Transform | None, float]] = [(start, None, 0.0)]
    while todo:
        name, link, log_scale = todo.pop()
        if name in outputs:
            ends.add((link, log_scale, name))
        for node in consumers.get(name, []):
            op = node.op_type
            out = node.output[0]
            if op in _PASS_AFTER:
                todo.append((out, link, log_scale))
            elif op in _LINK_OPS:
                if link is not None or post_transform != "NONE":
                    raise ModelLoadError(
                        f"{_name(node)} after the tree ensemble applies a second link "
                        f"(after {link or post_transform}); refusing to explain it"
                    )
                if op == "Exp" and classifier:
                    raise ModelLoadError(f"{_name(node)} after a tree classifier is not supported")
                todo.append((out, _LINK_OPS[op], log_scale))
            elif op in ("Mul", "Div") and link == "exp":
                todo.append((out, link, log_scale + _log_factor(node, name, consts)))
            elif op in ("Mul", "Div") and _log_factor(node, name, consts) == 0.0:
                todo.append((out, link, log_scale))  # by one: onnxmltools' LightGBM writes it
            else:
                raise ModelLoadError(
                    f"unsupported operator {_name(node)} after the tree ensemble: explanations "
                    "would not be of the model's output (recognised: the links Exp, Sigmoid, "
                    "Softmax, an Exp's Mul by a positive constant, Mul by one, and "
                    f"{', '.join(sorted(_PASS_AFTER))})"
                )
    if len({(link, scale) for link, scale, _ in ends}) > 1:
        raise ModelLoadError(
            "the graph's outputs apply different transforms to the tree scores; "
            "refusing to explain it"
        )
    if not ends:
        return OutputChain(None, 0.0, None)
    link, log_scale, output = sorted(ends, key=lambda e: e[2])[0]
    return OutputChain(link, log_scale, output)


def _log_factor(node: Any, value: str, consts: dict[str, Any]) -> float:
    """log(c) for ``value * c`` (or ``-log(c)`` for ``value / c``) with c a positive scalar."""
    others = [i for i in node.input if i != value]
    if (
        len(node.input) != 2
        or len(others) != 1
        or others[0] not in consts
        or (node.op_type == "Div" and node.input[0] != value)
    ):
        raise ModelLoadError(
            f"{_name(node)} after the tree ensemble's Exp must scale it by a constant"
        )
    c = np.asarray(consts[others[0]], dtype=np.float64)
    if c.size != 1 or not (math.isfinite(float(c.reshape(-1)[0])) and c.reshape(-1)[0] > 0):
        raise ModelLoadError(
            f"{_name(node)} after the tree ensemble's Exp multiplies by {c.tolist()}: "
            "only one positive constant is supported"
        )
    log_c = math.log(float(np.float32(c.reshape(-1)[0])))
    return log_c if node.op_type == "Mul" else -log_c
