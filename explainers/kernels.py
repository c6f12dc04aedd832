"""Compiled kernels (numba): prediction, leaf path tables and Fast TreeSHAP.

Path-dependent TreeSHAP is computed the "Fast TreeSHAP v2" way (Yang, 2021):
for each leaf, the Shapley weight of every feature on its path depends only on
which of those features the row satisfies (a bitmask), so all 2^d weights are
precomputed once per model and a row costs one table lookup per leaf and
path feature: O(T·L·D) instead of the original O(T·L·D²) with its
extend/unwind loops. Exactness is unchanged (the same sums, reordered).
"""

# The kernels' argument types are inferred by numba at compile time; annotating every
# array argument would only repeat what the callers pass.
# mypy: allow-untyped-defs
from __future__ import annotations

from typing import Any

import numba
import numpy as np

_jit = numba.njit(cache=True, nogil=True)
_pjit = numba.njit(cache=True, nogil=True, parallel=True)


@_jit
def predict_margin(X, left, right, default, feature, threshold, value, roots, tree_output, base):
    n = X.shape[0]
    n_out = value.shape[1]
    out = np.empty((n, n_out))
    for r in range(n):
        for k in range(n_out):
            out[r, k] = base[k]
        for t in range(roots.shape[0]):
            node = roots[t]
            while left[node] >= 0:
                x = X[r, feature[node]]
                if np.isnan(x):
                    node = default[node]
                elif x <= threshold[node]:
                    node = left[node]
                else:
                    node = right[node]
            k0 = tree_output[t]
            if k0 >= 0:
                out[r, k0] += value[node, k0]
            else:
                for k in range(n_out):
                    out[r, k] += value[node, k]
    return out


@_jit
def leaf_indices(X, left, right, default, feature, threshold, roots):
    """The node each row reaches in each tree: (rows, trees)."""
    n = X.shape[0]
    out = np.empty((n, roots.shape[0]), dtype=np.int32)
    for r in range(n):
        for t in range(roots.shape[0]):
            node = roots[t]
            while left[node] >= 0:
                x = X[r, feature[node]]
                if np.isnan(x):
                    node = default[node]
                elif x <= threshold[node]:
                    node = left[node]
                else:
                    node = right[node]
            out[r, t] = node
    return out


@_jit
def tree_depth(left, right, roots):
    """The largest number of edges from a root to a leaf."""
    depth = np.zeros(left.shape[0], dtype=np.int32)
    best = 0
    stack = np.empty(left.shape[0], dtype=np.int32)
    for t in range(roots.shape[0]):
        top = 0
        stack[0] = roots[t]
        depth[roots[t]] = 0
        while top >= 0:
            node = stack[top]
            top -= 1
            if left[node] < 0:
                best = max(best, depth[node])
                continue
            for c in (left[node], right[node]):
                depth[c] = depth[node] + 1
                top += 1
                stack[top] = c
    return best


@_jit
def leaf_paths(left, right, feature, cover, roots, n_leaves, max_depth):
    """Per leaf: its path's edges and its unique features with their zero fractions.

    Returns leaf_node, leaf_tree, n_edges, edge_node, edge_left, edge_slot, n_unique,
    unique_feature, zero_fraction. ``edge_slot`` maps an edge to its unique feature.
    """
    D = max(max_depth, 1)
    leaf_node = np.empty(n_leaves, dtype=np.int32)
    leaf_tree = np.empty(n_leaves, dtype=np.int32)
    n_edges = np.zeros(n_leaves, dtype=np.int32)
    edge_node = np.zeros((n_leaves, D), dtype=np.int32)
    edge_left = np.zeros((n_leaves, D), dtype=np.bool_)
    edge_slot = np.zeros((n_leaves, D), dtype=np.int32)
    n_unique = np.zeros(n_leaves, dtype=np.int32)
    unique_feature = np.zeros((n_leaves, D), dtype=np.int32)
    zero_fraction = np.ones((n_leaves, D))
    # Depth-first with an explicit path: path_node[i] is the node at depth i.
    path_node = np.empty(D + 1, dtype=np.int32)
    next_child = np.empty(D + 1, dtype=np.int32)  # 0: go left next, 1: right next, 2: done
    li = 0
    for t in range(roots.shape[0]):
        depth = 0
        path_node[0] = roots[t]
        next_child[0] = 0
        while depth >= 0:
            node = path_node[depth]
            if left[node] < 0:
                leaf_node[li] = node
                leaf_tree[li] = t
                n_edges[li] = depth
                nu = 0
                for e in range(depth):
                    parent = path_node[e]
                    child = path_node[e + 1]
                    edge_node[li, e] = parent
                    edge_left[li, e] = child == left[parent]
                    f = feature[parent]
                    slot = -1
                    for u in range(nu):
                        if unique_feature[li, u] == f:
                            slot = u
                    if slot < 0:
                        slot = nu
                        unique_feature[li, nu] = f
                        zero_fraction[li, nu] = 1.0
                        nu += 1
                    edge_slot[li, e] = slot
                    pc = cover[parent]
                    zero_fraction[li, slot] *= cover[child] / pc if pc > 0 else 0.0
                n_unique[li] = nu
                li += 1
                depth -= 1
                continue
            step = next_child[depth]
            if step == 2:
                depth -= 1
                continue
            next_child[depth] = step + 1
            depth += 1
            path_node[depth] = left[node] if step == 0 else right[node]
            next_child[depth] = 0
    return (
        leaf_node,
        leaf_tree,
        n_edges,
        edge_node,
        edge_left,
        edge_slot,
        n_unique,
        unique_feature,
        zero_fraction,
    )


@_jit
def fill_weights(n_unique, zero_fraction, offsets, weights):
    """weights[off + mask*d + j]: the Shapley weight of path feature j given satisfied set mask.

    phi_j = v · (o_j - z_j) · Σ_{S ⊆ A} w(|S|, d) Π_{k ∉ S, k ≠ j} z_k with A the other
    satisfied features and w(s, d) = s!(d-1-s)!/d!; grouping S by the size of A \\ S turns
    the sum into elementary symmetric polynomials of the z's in A.
    """
    L = n_unique.shape[0]
    Dm = zero_fraction.shape[1] + 1
    w = np.zeros(Dm)
    e = np.zeros(Dm)
    za = np.zeros(Dm)
    for li in range(L):
        d = n_unique[li]
        if d == 0:
            continue
        # w(s, d) for s = 0..d-1, built by ratios to stay exact for large d.
        w[0] = 1.0 / d
        for s in range(1, d):
            w[s] = w[s - 1] * s / (d - s)
        off = offsets[li]
        for mask in range(1 << d):
            for j in range(d):
                prod_b = 1.0
                na = 0
                for k in range(d):
                    if k == j:
                        continue
                    if (mask >> k) & 1:
                        za[na] = zero_fraction[li, k]
                        na += 1
                    else:
                        prod_b *= zero_fraction[li, k]
                e[0] = 1.0
                for a in range(1, na + 1):
                    e[a] = 0.0
                for a in range(na):
                    for q in range(a + 1, 0, -1):
                        e[q] += e[q - 1] * za[a]
                acc = 0.0
                for q in range(na + 1):
                    acc += w[na - q] * e[q]
                o = 1.0 if (mask >> j) & 1 else 0.0
                weights[off + mask * d + j] = (o - zero_fraction[li, j]) * prod_b * acc


@_jit
def _shap_row(
    x,
    phi,
    go,
    left,
    default,
    feature,
    threshold,
    value,
    tree_output,
    leaf_node,
    leaf_tree,
    n_edges,
    edge_node,
    edge_left,
    edge_slot,
    n_unique,
    unique_feature,
    offsets,
    weights,
):
    for n in range(left.shape[0]):
        if left[n] >= 0:
            v = x[feature[n]]
            go[n] = (default[n] == left[n]) if np.isnan(v) else v <= threshold[n]
    n_out = value.shape[1]
    for li in range(leaf_node.shape[0]):
        d = n_unique[li]
        if d == 0:
            continue
        mask = (1 << d) - 1
        for e in range(n_edges[li]):
            if go[edge_node[li, e]] != edge_left[li, e]:
                mask &= ~(1 << edge_slot[li, e])
        base = offsets[li] + mask * d
        node = leaf_node[li]
        k0 = tree_output[leaf_tree[li]]
        if k0 >= 0:
            v = value[node, k0]
            for j in range(d):
                phi[k0, unique_feature[li, j]] += weights[base + j] * v
        else:
            for j in range(d):
                wj = weights[base + j]
                f = unique_feature[li, j]
                for k in range(n_out):
                    phi[k, f] += wj * value[node, k]


@_jit
def shap_serial(
    X,
    left,
    default,
    feature,
    threshold,
    value,
    tree_output,
    leaf_node,
    leaf_tree,
    n_edges,
    edge_node,
    edge_left,
    edge_slot,
    n_unique,
    unique_feature,
    offsets,
    weights,
):
    n = X.shape[0]
    phi = np.zeros((n, value.shape[1], X.shape[1]))
    go = np.empty(left.shape[0], dtype=np.bool_)
    for r in range(n):
        _shap_row(
            X[r],
            phi[r],
            go,
            left,
            default,
            feature,
            threshold,
            value,
            tree_output,
            leaf_node,
            leaf_tree,
            n_edges,
            edge_node,
            edge_left,
            edge_slot,
            n_unique,
            unique_feature,
            offsets,
            weights,
        )
    return phi


@_pjit
def shap_parallel(
    X,
    left,
    default,
    feature,
    threshold,
    value,
    tree_output,
    leaf_node,
    leaf_tree,
    n_edges,
    edge_node,
    edge_left,
    edge_slot,
    n_unique,
    unique_feature,
    offsets,
    weights,
):
    n = X.shape[0]
    phi = np.zeros((n, value.shape[1], X.shape[1]))
    for r in numba.prange(n):
        go = np.empty(left.shape[0], dtype=np.bool_)
        _shap_row(
            X[r],
            phi[r],
            go,
            left,
            default,
            feature,
            threshold,
            value,
            tree_output,
            leaf_node,
            leaf_tree,
            n_edges,
            edge_node,
            edge_left,
            edge_slot,
            n_unique,
            unique_feature,
            offsets,
            weights,
        )
    return phi


def as_args(*arrays: Any) -> tuple[Any, ...]:
    return tuple(np.ascontiguousarray(a) for a in arrays)


@_jit
def node_counts(X, left, right, default, feature, threshold, roots):
    """How many rows pass through each node: covers from a background sample."""
    counts = np.zeros(left.shape[0])
    for r in range(X.shape[0]):
        for t in range(roots.shape[0]):
            node = roots[t]
            counts[node] += 1.0
            while left[node] >= 0:
                x = X[r, feature[node]]
                if np.isnan(x):
                    node = default[node]
                elif x <= threshold[node]:
                    node = left[node]
                else:
                    node = right[node]
                counts[node] += 1.0
    return counts
