"""Per-leaf path tables for Fast TreeSHAP v2 (numba), built once per model.

For each leaf, the Shapley weight of every feature on its path depends only on
which of those features a row satisfies (a bitmask), so all 2^d weights are
precomputed here and a row then costs one lookup per leaf and path feature:
O(T·L·D) per row instead of the original algorithm's O(T·L·D²) extend/unwind
loops (Yang, "Fast TreeSHAP", 2021). Exactness is unchanged: the same sums, reordered.
"""

# The kernels' argument types are inferred by numba at compile time; annotating every
# array argument would only repeat what the callers pass.
# mypy: allow-untyped-defs
from __future__ import annotations

import numba
import numpy as np

_jit = numba.njit(cache=True, nogil=True)


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
def path_unique_counts(left, right, feature, roots, n_leaves, n_features):
    """Per leaf, the number of distinct features on its path: what its table needs.

    A depth-first walk that counts each feature's uses on the current path, so the
    answer costs one step per edge and no per-leaf arrays (deep trees stay cheap to size).
    """
    out = np.zeros(n_leaves, dtype=np.int32)
    uses = np.zeros(max(n_features, 1), dtype=np.int32)
    n_nodes = left.shape[0]
    path_node = np.empty(n_nodes + 1, dtype=np.int32)
    next_child = np.empty(n_nodes + 1, dtype=np.int32)  # 0: left next, 1: right next, 2: done
    li = 0
    for t in range(roots.shape[0]):
        depth = 0
        distinct = 0
        path_node[0] = roots[t]
        next_child[0] = 0
        while depth >= 0:
            node = path_node[depth]
            if left[node] < 0:
                out[li] = distinct
                li += 1
                depth -= 1
                continue
            step = next_child[depth]
            f = feature[node]
            if step == 2:
                # Leaving this split: its feature is no longer on the path.
                uses[f] -= 1
                if uses[f] == 0:
                    distinct -= 1
                depth -= 1
                continue
            if step == 0:
                if uses[f] == 0:
                    distinct += 1
                uses[f] += 1
            next_child[depth] = step + 1
            depth += 1
            path_node[depth] = left[node] if step == 0 else right[node]
            next_child[depth] = 0
    return out


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
