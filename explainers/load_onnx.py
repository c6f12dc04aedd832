"""ONNX ``ai.onnx.ml`` TreeEnsembleClassifier / TreeEnsembleRegressor -> TreeEnsemble.

The graph must feed its input (optionally through a Cast) straight into one tree
ensemble node: a preprocessing operator before it would make the trees' features
differ from the model's inputs. Operators after it are checked by onnx_outputs.py:
links the converters write (Exp, then Mul by a constant; Sigmoid; Softmax) become the
ensemble's transform, reshaping ones pass, anything else is refused.

ONNX stores thresholds as float32 and compares in the input's type; it has no node
covers, so path-dependent TreeSHAP needs a background dataset (covers.py).
Margins are the ensemble's scores before ``post_transform``; in the "binary case"
(two labels, one score column) the one output is the positive class's score.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from explainers.ensemble import Transform, TreeEnsemble, build, lt_to_le
from explainers.errors import ModelLoadError, converting
from explainers.onnx_outputs import output_chain

# Beyond any tree model we serve; the fidelity probe allocates rows x features.
MAX_FEATURES = 1 << 16
_TREE_OPS = ("TreeEnsembleClassifier", "TreeEnsembleRegressor")
_PASS_BEFORE = ("Cast", "Identity")
_TRANSFORMS: dict[str, Transform] = {
    "NONE": "identity",
    "LOGISTIC": "logistic",
    "SOFTMAX": "softmax",
}


def load_onnx_file(path: Path) -> TreeEnsemble:
    import onnx
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load_model_from_string(path.read_bytes())
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise ModelLoadError(
            f"{path}: not a readable ONNX model ({exc or 'truncated or corrupt'})"
        ) from None
    # A well-formed protobuf can still hold attributes no converter writes (a missing
    # list, a name that is not UTF-8, lists of different lengths).
    malformed = (KeyError, TypeError, ValueError, IndexError, OverflowError)
    with converting(path, "ONNX tree ensemble", malformed):
        return from_onnx(model)


def tree_node(model: Any) -> Any:
    """The graph's one tree-ensemble node, after checking nothing transforms the input first."""
    graph = model.graph
    if not graph.node:
        raise ModelLoadError("the ONNX graph is empty")
    trees = [n for n in graph.node if n.op_type in _TREE_OPS]
    if not trees:
        ops = sorted({n.op_type for n in graph.node})
        raise ModelLoadError(
            f"no TreeEnsembleClassifier/TreeEnsembleRegressor in the graph (operators: {ops})"
        )
    if len(trees) > 1:
        raise ModelLoadError("the graph has several tree-ensemble operators; only one is supported")
    node = trees[0]
    if len(graph.input) != 1:
        raise ModelLoadError(
            f"the graph has {len(graph.input)} inputs; one feature tensor is expected"
        )
    produced_by = {o: n for n in graph.node for o in n.output}
    name = node.input[0]
    while name != graph.input[0].name:
        prev = produced_by.get(name)
        if prev is None:
            raise ModelLoadError(
                f"the tree ensemble's input {name!r} does not come from the graph input"
            )
        if prev.op_type not in _PASS_BEFORE:
            raise ModelLoadError(
                f"unsupported operator {prev.op_type} between the input and the tree ensemble: "
                "explanations would not be in terms of the model's inputs"
            )
        name = prev.input[0]
    return node


def _attrs(node: Any) -> dict[str, Any]:
    from onnx import helper, numpy_helper

    out: dict[str, Any] = {}
    for a in node.attribute:
        v = helper.get_attribute_value(a)
        if a.type == a.TENSOR:
            v = numpy_helper.to_array(v)
        out[a.name] = v
    return out


def _input_info(model: Any) -> tuple[type[np.floating[Any]], int | None]:
    from onnx import TensorProto

    t = model.graph.input[0].type.tensor_type
    dtype: type[np.floating[Any]] = np.float64 if t.elem_type == TensorProto.DOUBLE else np.float32
    dims = t.shape.dim
    width = dims[1].dim_value if len(dims) == 2 and dims[1].HasField("dim_value") else None
    return dtype, width


def from_onnx(model: Any) -> TreeEnsemble:
    node = tree_node(model)
    a = _attrs(node)
    dtype, width = _input_info(model)
    classifier = node.op_type == "TreeEnsembleClassifier"
    post = a.get("post_transform", b"NONE")
    post = post.decode() if isinstance(post, bytes) else str(post)
    if post not in _TRANSFORMS:
        raise ModelLoadError(
            f"post_transform {post} is not supported (NONE, LOGISTIC, SOFTMAX are)"
        )
    prefix = "class" if classifier else "target"
    leaf_tree = list(a[f"{prefix}_treeids"])
    leaf_node = list(a[f"{prefix}_nodeids"])
    leaf_out = list(a[f"{prefix}_ids"])
    leaf_w = np.asarray(
        a.get(f"{prefix}_weights_as_tensor", a.get(f"{prefix}_weights")), dtype=np.float64
    )
    binary_case = False
    if classifier:
        labels = a.get("classlabels_int64s") or a.get("classlabels_strings") or []
        n_outputs = len(labels)
        if n_outputs == 2 and len(set(leaf_out)) <= 1:
            binary_case, n_outputs = True, 1
            leaf_out = [0] * len(leaf_out)
    else:
        n_outputs = int(a.get("n_targets", 1))
    if n_outputs < 1 or (leaf_out and max(leaf_out) >= n_outputs):
        raise ModelLoadError("leaf weights name outputs beyond the declared classes/targets")
    base = np.asarray(
        a.get("base_values_as_tensor", a.get("base_values", [0.0] * n_outputs)), dtype=np.float64
    )
    if binary_case and base.size == 2:
        base = base[1:]
    if base.size == 0:
        base = np.zeros(n_outputs)
    if base.size != n_outputs:
        raise ModelLoadError(f"base_values has {base.size} values for {n_outputs} outputs")
    scale = 1.0
    aggregate = a.get("aggregate_function", b"SUM")
    aggregate = aggregate.decode() if isinstance(aggregate, bytes) else str(aggregate)
    n_trees = len(set(a["nodes_treeids"]))
    if aggregate == "AVERAGE":
        scale = 1.0 / n_trees
    elif aggregate != "SUM":
        raise ModelLoadError(f"aggregate_function {aggregate} is not supported (SUM, AVERAGE are)")
    thresholds = a.get("nodes_values_as_tensor", a.get("nodes_values"))
    n_features = _n_features(a, width)
    trees = _trees(
        a, thresholds, dtype, n_outputs, (leaf_tree, leaf_node, leaf_out, leaf_w * scale)
    )
    transform = _TRANSFORMS[post]
    chain = output_chain(model, node, post)
    if chain.link is not None:
        transform = chain.link
        # exp(m) * c = exp(m + log c): the margin stays the log of the prediction.
        base = base + chain.log_scale
    if transform == "softmax" and n_outputs < 2:
        raise ModelLoadError("a softmax over one output is not supported")
    ens = build(
        trees,
        n_outputs=n_outputs,
        base=base,
        n_features=n_features,
        transform=transform,
        input_dtype=dtype,
        source="onnx",
        has_cover=False,
    )
    if binary_case and post == "SOFTMAX":
        raise ModelLoadError("SOFTMAX over a single binary score column is not supported")
    return ens


def _n_features(a: dict[str, Any], width: int | None) -> int:
    used = max((int(f) for f in a["nodes_featureids"]), default=0) + 1
    if width is None:
        return used
    if width > MAX_FEATURES:
        raise ModelLoadError(f"the input declares {width} features (at most {MAX_FEATURES})")
    if used > width:
        raise ModelLoadError(
            f"the trees split on feature {used - 1} but the input has {width} features"
        )
    return width


def _trees(
    a: dict[str, Any],
    thresholds: Any,
    dtype: type[np.floating[Any]],
    n_outputs: int,
    leaves: tuple[list[int], list[int], list[int], Any],
) -> list[dict[str, Any]]:
    tree_ids = [int(t) for t in a["nodes_treeids"]]
    node_ids = [int(n) for n in a["nodes_nodeids"]]
    modes = [m.decode() if isinstance(m, bytes) else str(m) for m in a["nodes_modes"]]
    feats = [int(f) for f in a["nodes_featureids"]]
    true_ids = [int(t) for t in a["nodes_truenodeids"]]
    false_ids = [int(f) for f in a["nodes_falsenodeids"]]
    n_all = len(tree_ids)
    tracks = list(a.get("nodes_missing_value_tracks_true", [0] * n_all)) or [0] * n_all
    thr = np.asarray(thresholds, dtype=np.float32)
    for name, arr in (
        ("nodes_nodeids", node_ids),
        ("nodes_modes", modes),
        ("nodes_featureids", feats),
        ("nodes_truenodeids", true_ids),
        ("nodes_falsenodeids", false_ids),
        ("nodes_values", thr),
        ("nodes_missing_value_tracks_true", tracks),
    ):
        if len(arr) != n_all:
            raise ModelLoadError(f"attribute {name} has {len(arr)} entries for {n_all} nodes")
    by_tree: dict[int, list[int]] = defaultdict(list)
    for i, t in enumerate(tree_ids):
        by_tree[t].append(i)
    leaf_values: dict[tuple[int, int], Any] = {}
    for t, n, k, w in zip(*leaves, strict=True):
        key = (int(t), int(n))
        leaf_values.setdefault(key, np.zeros(n_outputs))[int(k)] += float(w)
    out = []
    for t in sorted(by_tree):
        idx = by_tree[t]
        local = {node_ids[i]: j for j, i in enumerate(idx)}
        if len(local) != len(idx):
            raise ModelLoadError(f"tree {t} repeats a node id")
        n = len(idx)
        left = np.full(n, -1)
        right = np.full(n, -1)
        default = np.full(n, -1)
        feature = np.full(n, -1)
        threshold = np.zeros(n)
        value = np.zeros((n, n_outputs))
        for j, i in enumerate(idx):
            mode = modes[i]
            if mode == "LEAF":
                value[j] = leaf_values.get((t, node_ids[i]), 0.0)
                continue
            try:
                tj, fj = local[true_ids[i]], local[false_ids[i]]
            except KeyError:
                raise ModelLoadError(
                    f"tree {t} node {node_ids[i]} points to a missing node"
                ) from None
            feature[j] = feats[i]
            if mode == "BRANCH_LEQ":
                left[j], right[j], threshold[j] = tj, fj, float(thr[i])
            elif mode == "BRANCH_LT":
                left[j], right[j], threshold[j] = tj, fj, float(lt_to_le(thr[i], dtype))
            elif mode == "BRANCH_GTE":  # x >= t is not (x < t)
                left[j], right[j], threshold[j] = fj, tj, float(lt_to_le(thr[i], dtype))
            elif mode == "BRANCH_GT":  # x > t is not (x <= t)
                left[j], right[j], threshold[j] = fj, tj, float(thr[i])
            else:
                raise ModelLoadError(
                    f"tree {t} node {node_ids[i]}: split mode {mode} is not supported"
                )
            # A NaN fails every comparison, so it takes the false branch unless tracked to true.
            default[j] = tj if int(tracks[i]) else fj
        children = set(left[left >= 0].tolist()) | set(right[right >= 0].tolist())
        roots = [j for j in range(n) if j not in children]
        if len(roots) != 1:
            raise ModelLoadError(f"tree {t} has {len(roots)} roots")
        if roots[0] != 0:
            order = _preorder(roots[0], left, right)
            perm = np.asarray(order)
            new_index = np.empty(n, dtype=np.int64)
            new_index[perm] = np.arange(n)
            left, right, default = (
                np.where(c >= 0, new_index[np.maximum(c, 0)], -1)
                for c in (left[perm], right[perm], default[perm])
            )
            feature, threshold, value = feature[perm], threshold[perm], value[perm]
        # Most multi-class converters give each tree one class: let the kernels skip the rest.
        used = np.flatnonzero(np.abs(value).sum(axis=0) > 0)
        output = int(used[0]) if len(used) == 1 else (0 if n_outputs == 1 else -1)
        out.append(
            {
                "left": left,
                "right": right,
                "default": default,
                "feature": feature,
                "threshold": threshold,
                "value": value,
                "output": output,
            }
        )
    return out


def _preorder(root: int, left: Any, right: Any) -> list[int]:
    order, stack = [], [root]
    while stack:
        j = stack.pop()
        order.append(j)
        if left[j] >= 0:
            stack.extend((int(right[j]), int(left[j])))
    if len(order) != len(left):
        raise ModelLoadError("a tree has nodes unreachable from its root")
    return order
