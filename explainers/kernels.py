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
def _shap_rows(
    X,
    r0,
    r1,
    phi,
    go,
    left,
    default,
    feature,
    threshold,
    value,
    tree_output,
    roots,
    leaf_start,
    leaf_node,
    n_edges,
    edge_node,
    edge_left,
    edge_slot,
    n_unique,
    unique_feature,
    offsets,
    weights,
):
    """Rows r0..r1 tree by tree, leaf by leaf: a leaf's weight table (at most a few KB)
    stays in cache while every row of the block looks up its mask in it, so the tables
    stream through memory once per block instead of once per row."""
    n_out = value.shape[1]
    n_nodes = left.shape[0]
    for t in range(roots.shape[0]):
        s = roots[t]
        e = roots[t + 1] if t + 1 < roots.shape[0] else n_nodes
        for r in range(r0, r1):
            for n in range(s, e):
                if left[n] >= 0:
                    v = X[r, feature[n]]
                    go[r - r0, n - s] = (
                        (default[n] == left[n]) if np.isnan(v) else v <= threshold[n]
                    )
        k0 = tree_output[t]
        for li in range(leaf_start[t], leaf_start[t + 1]):
            d = n_unique[li]
            if d == 0:
                continue
            node = leaf_node[li]
            off = offsets[li]
            ne = n_edges[li]
            full = (1 << d) - 1
            for r in range(r0, r1):
                mask = full
                for q in range(ne):
                    if go[r - r0, edge_node[li, q] - s] != edge_left[li, q]:
                        mask &= ~(1 << edge_slot[li, q])
                base = off + mask * d
                if k0 >= 0:
                    val = value[node, k0]
                    for j in range(d):
                        phi[r, k0, unique_feature[li, j]] += weights[base + j] * val
                else:
                    for j in range(d):
                        wj = weights[base + j]
                        f = unique_feature[li, j]
                        for k in range(n_out):
                            phi[r, k, f] += wj * value[node, k]


@_jit
def path_bits(left, roots, leaf_start, n_edges, edge_node, edge_left, edge_slot, n_unique):
    """Bit form of each leaf's path, for trees with at most 64 internal nodes.

    rank[n] numbers node n among its tree's internal nodes; for leaf l and path feature
    slot s, need_left[l, s] / need_right[l, s] hold the ranks of the slot's edges that go
    left / right. A row satisfies slot s iff its go-left bits cover need_left and miss
    need_right. Returns (rank, need_left, need_right), or a rank of -1s when a tree is
    too large for 64 bits.
    """
    n_nodes = left.shape[0]
    rank = np.full(n_nodes, -1, dtype=np.int64)
    n_leaves = n_unique.shape[0]
    D = edge_slot.shape[1]
    need_left = np.zeros((n_leaves, D), dtype=np.int64)
    need_right = np.zeros((n_leaves, D), dtype=np.int64)
    for t in range(roots.shape[0]):
        s = roots[t]
        e = roots[t + 1] if t + 1 < roots.shape[0] else n_nodes
        k = 0
        for n in range(s, e):
            if left[n] >= 0:
                rank[n] = k
                k += 1
        if k > 64:
            rank[:] = -1
            return rank, need_left, need_right
    for li in range(n_leaves):
        for q in range(n_edges[li]):
            bit = np.int64(1) << rank[edge_node[li, q]]
            if edge_left[li, q]:
                need_left[li, edge_slot[li, q]] |= bit
            else:
                need_right[li, edge_slot[li, q]] |= bit
    return rank, need_left, need_right


@_jit
def _shap_rows_bits(
    X,
    r0,
    r1,
    phi,
    gobits,
    left,
    default,
    feature,
    threshold,
    value,
    tree_output,
    roots,
    leaf_start,
    leaf_node,
    rank,
    need_left,
    need_right,
    n_unique,
    unique_feature,
    offsets,
    weights,
):
    """As _shap_rows, with each row's go-left decisions in a tree packed into one int64."""
    n_out = value.shape[1]
    D = need_left.shape[1]
    nl = np.empty(D, dtype=np.int64)
    nr = np.empty(D, dtype=np.int64)
    uf = np.empty(D, dtype=np.int64)
    n_nodes = left.shape[0]
    for t in range(roots.shape[0]):
        s = roots[t]
        e = roots[t + 1] if t + 1 < roots.shape[0] else n_nodes
        for r in range(r0, r1):
            g = np.int64(0)
            for n in range(s, e):
                if left[n] >= 0:
                    v = X[r, feature[n]]
                    goes = (default[n] == left[n]) if np.isnan(v) else v <= threshold[n]
                    if goes:
                        g |= np.int64(1) << rank[n]
            gobits[r - r0] = g
        k0 = tree_output[t]
        for li in range(leaf_start[t], leaf_start[t + 1]):
            d = n_unique[li]
            if d == 0:
                continue
            node = leaf_node[li]
            off = offsets[li]
            # The leaf's few path features, hoisted out of the row loop.
            for j in range(d):
                nl[j] = need_left[li, j]
                nr[j] = need_right[li, j]
                uf[j] = unique_feature[li, j]
            if k0 >= 0:
                val = value[node, k0]
                for r in range(r0, r1):
                    g = gobits[r - r0]
                    mask = 0
                    for j in range(d):
                        if (g & nl[j]) == nl[j] and (g & nr[j]) == 0:
                            mask |= 1 << j
                    base = off + mask * d
                    row = phi[r, k0]
                    for j in range(d):
                        row[uf[j]] += weights[base + j] * val
            else:
                for r in range(r0, r1):
                    g = gobits[r - r0]
                    mask = 0
                    for j in range(d):
                        if (g & nl[j]) == nl[j] and (g & nr[j]) == 0:
                            mask |= 1 << j
                    base = off + mask * d
                    for j in range(d):
                        wj = weights[base + j]
                        for k in range(n_out):
                            phi[r, k, uf[j]] += wj * value[node, k]


@_jit
def shap_bits_serial(
    X,
    left,
    default,
    feature,
    threshold,
    value,
    tree_output,
    roots,
    leaf_start,
    leaf_node,
    rank,
    need_left,
    need_right,
    n_unique,
    unique_feature,
    offsets,
    weights,
    block,
):
    n = X.shape[0]
    phi = np.zeros((n, value.shape[1], X.shape[1]))
    gobits = np.empty(block, dtype=np.int64)
    for r0 in range(0, n, block):
        r1 = min(r0 + block, n)
        _shap_rows_bits(
            X,
            r0,
            r1,
            phi,
            gobits,
            left,
            default,
            feature,
            threshold,
            value,
            tree_output,
            roots,
            leaf_start,
            leaf_node,
            rank,
            need_left,
            need_right,
            n_unique,
            unique_feature,
            offsets,
            weights,
        )
    return phi


@_pjit
def shap_bits_parallel(
    X,
    left,
    default,
    feature,
    threshold,
    value,
    tree_output,
    roots,
    leaf_start,
    leaf_node,
    rank,
    need_left,
    need_right,
    n_unique,
    unique_feature,
    offsets,
    weights,
    block,
):
    n = X.shape[0]
    phi = np.zeros((n, value.shape[1], X.shape[1]))
    n_blocks = (n + block - 1) // block
    for b in numba.prange(n_blocks):
        r0 = b * block
        r1 = min(r0 + block, n)
        gobits = np.empty(block, dtype=np.int64)
        _shap_rows_bits(
            X,
            r0,
            r1,
            phi,
            gobits,
            left,
            default,
            feature,
            threshold,
            value,
            tree_output,
            roots,
            leaf_start,
            leaf_node,
            rank,
            need_left,
            need_right,
            n_unique,
            unique_feature,
            offsets,
            weights,
        )
    return phi


@_jit
def shap_serial(
    X,
    left,
    default,
    feature,
    threshold,
    value,
    tree_output,
    roots,
    leaf_start,
    leaf_node,
    n_edges,
    edge_node,
    edge_left,
    edge_slot,
    n_unique,
    unique_feature,
    offsets,
    weights,
    max_tree_nodes,
    block,
):
    n = X.shape[0]
    phi = np.zeros((n, value.shape[1], X.shape[1]))
    go = np.empty((block, max_tree_nodes), dtype=np.bool_)
    for r0 in range(0, n, block):
        r1 = min(r0 + block, n)
        _shap_rows(
            X,
            r0,
            r1,
            phi,
            go,
            left,
            default,
            feature,
            threshold,
            value,
            tree_output,
            roots,
            leaf_start,
            leaf_node,
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
    roots,
    leaf_start,
    leaf_node,
    n_edges,
    edge_node,
    edge_left,
    edge_slot,
    n_unique,
    unique_feature,
    offsets,
    weights,
    max_tree_nodes,
    block,
):
    n = X.shape[0]
    phi = np.zeros((n, value.shape[1], X.shape[1]))
    n_blocks = (n + block - 1) // block
    for b in numba.prange(n_blocks):
        r0 = b * block
        r1 = min(r0 + block, n)
        go = np.empty((block, max_tree_nodes), dtype=np.bool_)
        _shap_rows(
            X,
            r0,
            r1,
            phi,
            go,
            left,
            default,
            feature,
            threshold,
            value,
            tree_output,
            roots,
            leaf_start,
            leaf_node,
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
