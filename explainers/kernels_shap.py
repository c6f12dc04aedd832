"""Fast TreeSHAP v2 per-row kernels (numba) over the tables of kernels_tables.py."""

# The kernels' argument types are inferred by numba at compile time; annotating every
# array argument would only repeat what the callers pass.
# mypy: allow-untyped-defs
from __future__ import annotations

import numba
import numpy as np

_jit = numba.njit(cache=True, nogil=True)
_pjit = numba.njit(cache=True, nogil=True, parallel=True)


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
def _go_bits(X, r, i0, i1, split_nan_left, split_feature, split_threshold):
    """Row r's go-left decisions at one tree's splits i0..i1 (its internal nodes in order),
    bit i - i0 each. Branch-free: NaN compares false, then goes where split_nan_left says."""
    g = np.int64(0)
    for i in range(i0, i1):
        v = X[r, split_feature[i]]
        goes = np.int64(v <= split_threshold[i]) | (np.int64(np.isnan(v)) & split_nan_left[i])
        g |= goes << (i - i0)
    return g


@_jit
def _shap_rows_bits(
    X,
    r0,
    r1,
    phi,
    gobits,
    split_start,
    split_nan_left,
    split_feature,
    split_threshold,
    value,
    tree_output,
    roots,
    leaf_start,
    leaf_node,
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
    for t in range(roots.shape[0]):
        i0 = split_start[t]
        for r in range(r0, r1):
            gobits[r - r0] = _go_bits(
                X, r, i0, split_start[t + 1], split_nan_left, split_feature, split_threshold
            )
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
                    mask = np.int64(0)
                    for j in range(d):
                        # Branch-free: whether a row satisfies a slot is a coin flip to
                        # the branch predictor.
                        miss = ((g & nl[j]) ^ nl[j]) | (g & nr[j])
                        mask |= np.int64(miss == 0) << j
                    base = off + mask * d
                    row = phi[r, k0]
                    for j in range(d):
                        row[uf[j]] += weights[base + j] * val
            else:
                for r in range(r0, r1):
                    g = gobits[r - r0]
                    mask = np.int64(0)
                    for j in range(d):
                        # Branch-free: whether a row satisfies a slot is a coin flip to
                        # the branch predictor.
                        miss = ((g & nl[j]) ^ nl[j]) | (g & nr[j])
                        mask |= np.int64(miss == 0) << j
                    base = off + mask * d
                    for j in range(d):
                        wj = weights[base + j]
                        for k in range(n_out):
                            phi[r, k, uf[j]] += wj * value[node, k]


@_jit
def shap_bits_serial(
    X,
    split_start,
    split_nan_left,
    split_feature,
    split_threshold,
    value,
    tree_output,
    roots,
    leaf_start,
    leaf_node,
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
            split_start,
            split_nan_left,
            split_feature,
            split_threshold,
            value,
            tree_output,
            roots,
            leaf_start,
            leaf_node,
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
    split_start,
    split_nan_left,
    split_feature,
    split_threshold,
    value,
    tree_output,
    roots,
    leaf_start,
    leaf_node,
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
            split_start,
            split_nan_left,
            split_feature,
            split_threshold,
            value,
            tree_output,
            roots,
            leaf_start,
            leaf_node,
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


@_jit
def _direct_trees(
    X,
    t0,
    t1,
    phi,
    split_start,
    split_nan_left,
    split_feature,
    split_threshold,
    value,
    tree_output,
    leaf_start,
    leaf_node,
    path_left,
    path_right,
    slot_nodes,
    n_unique,
    unique_feature,
    zero_fraction,
    coef,
):
    """Every row's contributions from trees t0..t1, added to phi, with each leaf's weights
    computed for the row's own mask instead of read from the tables.

    A table read is one cache miss per leaf (the tables are megabytes, a row touches one
    line of each at random), which is what a single row's time goes to; the few numbers
    a leaf needs here (its zero fractions, its path bits) are read in order. For the d
    path features of a leaf, A the satisfied ones and B the others, with
    e_q the elementary symmetric polynomials of the z's in A and coef[d, s] = s!(d-1-s)!/d!:
    a feature of B gets -Π_B z · Σ_s coef[d, s] e_{|A|-s}; a feature j of A gets
    (1 - z_j) Π_B z · Σ_s coef[d, s] e'_{|A|-1-s}, e' being e with z_j divided out
    (e'_q = e_q - z_j e'_{q-1}). O(d²) per leaf and row, against O(2^d·d) table entries.
    Up to four satisfied features (nine leaves in ten of a default LightGBM model for a
    typical row) the sums are written out: the general loops' bookkeeping and their
    mispredicted ends cost more than their arithmetic there.
    """
    n_out = value.shape[1]
    D = slot_nodes.shape[1]
    za = np.empty(D)  # z of the satisfied features, in slot order
    z_or_1 = np.ones(2)
    # Per satisfied feature its weight, (1 - z) included; wa[D]: the others' weight.
    wa = np.zeros(D + 1)
    pos = np.empty(D, dtype=np.int64)  # slot j's weight is wa[pos[j]]
    e = np.empty(D + 1)
    for r in range(X.shape[0]):
        for t in range(t0, t1):
            g = _go_bits(
                X,
                r,
                split_start[t],
                split_start[t + 1],
                split_nan_left,
                split_feature,
                split_threshold,
            )
            k0 = tree_output[t]
            for li in range(leaf_start[t], leaf_start[t + 1]):
                d = n_unique[li]
                if d == 0:
                    continue
                # The path's splits where the row goes the other way; a feature is
                # satisfied when none of its splits (its slot's nodes) is among them.
                dis = (path_left[li] & ~g) | (path_right[li] & g)
                na = 0
                prod_b = 1.0
                for j in range(d):
                    # miss: 1 when the row takes the other branch at one of the slot's
                    # splits. Integer arithmetic on purpose: whether a row satisfies a
                    # slot is a coin flip to the branch predictor, and LLVM compiles a
                    # comparison turned into a float (or a float select) into a branch;
                    # those mispredictions were a quarter of a LightGBM row's time.
                    x = dis & slot_nodes[li, j]
                    miss = int(np.uint64(x | -x) >> np.uint64(63))
                    z = zero_fraction[li, j]
                    za[na] = z
                    # The product of the unsatisfied z's: z or 1 picked by an index, since
                    # a float select would be compiled into a branch.
                    z_or_1[1] = z
                    prod_b *= z_or_1[miss]
                    pos[j] = (1 - miss) * na + miss * D
                    na += 1 - miss
                c = coef[d]
                w_out = 0.0
                if na == 0:
                    w_out = -prod_b * c[0]
                elif na == 1:
                    w_out = -prod_b * (c[1] + c[0] * za[0])
                    wa[0] = (1.0 - za[0]) * (prod_b * c[0])
                elif na == 2:
                    z1 = za[0]
                    z2 = za[1]
                    w_out = -prod_b * (c[2] + c[1] * (z1 + z2) + c[0] * z1 * z2)
                    wa[0] = (1.0 - z1) * (prod_b * (c[1] + c[0] * z2))
                    wa[1] = (1.0 - z2) * (prod_b * (c[1] + c[0] * z1))
                elif na == 3:
                    z1 = za[0]
                    z2 = za[1]
                    z3 = za[2]
                    p12 = z1 * z2
                    p13 = z1 * z3
                    p23 = z2 * z3
                    w_out = -prod_b * (
                        c[3] + c[2] * (z1 + z2 + z3) + c[1] * (p12 + p13 + p23) + c[0] * p12 * z3
                    )
                    wa[0] = (1.0 - z1) * (prod_b * (c[2] + c[1] * (z2 + z3) + c[0] * p23))
                    wa[1] = (1.0 - z2) * (prod_b * (c[2] + c[1] * (z1 + z3) + c[0] * p13))
                    wa[2] = (1.0 - z3) * (prod_b * (c[2] + c[1] * (z1 + z2) + c[0] * p12))
                elif na == 4:
                    z1 = za[0]
                    z2 = za[1]
                    z3 = za[2]
                    z4 = za[3]
                    p12 = z1 * z2
                    p13 = z1 * z3
                    p14 = z1 * z4
                    p23 = z2 * z3
                    p24 = z2 * z4
                    p34 = z3 * z4
                    w_out = -prod_b * (
                        c[4]
                        + c[3] * (z1 + z2 + z3 + z4)
                        + c[2] * (p12 + p13 + p14 + p23 + p24 + p34)
                        + c[1] * (p12 * z3 + p12 * z4 + p13 * z4 + p23 * z4)
                        + c[0] * p12 * p34
                    )
                    wa[0] = (1.0 - z1) * (
                        prod_b
                        * (
                            c[3]
                            + c[2] * (z2 + z3 + z4)
                            + c[1] * (p23 + p24 + p34)
                            + c[0] * p23 * z4
                        )
                    )
                    wa[1] = (1.0 - z2) * (
                        prod_b
                        * (
                            c[3]
                            + c[2] * (z1 + z3 + z4)
                            + c[1] * (p13 + p14 + p34)
                            + c[0] * p13 * z4
                        )
                    )
                    wa[2] = (1.0 - z3) * (
                        prod_b
                        * (
                            c[3]
                            + c[2] * (z1 + z2 + z4)
                            + c[1] * (p12 + p14 + p24)
                            + c[0] * p12 * z4
                        )
                    )
                    wa[3] = (1.0 - z4) * (
                        prod_b
                        * (
                            c[3]
                            + c[2] * (z1 + z2 + z3)
                            + c[1] * (p12 + p13 + p23)
                            + c[0] * p12 * z3
                        )
                    )
                else:
                    e[0] = 1.0
                    for q in range(1, na + 1):
                        e[q] = 0.0
                    for a in range(na):
                        z = za[a]
                        for q in range(a + 1, 0, -1):
                            e[q] += e[q - 1] * z
                    if na < d:
                        acc = 0.0
                        for q in range(na + 1):
                            acc += c[na - q] * e[q]
                        w_out = -prod_b * acc
                    for a in range(na):
                        z = za[a]
                        ep = 1.0
                        acc = c[na - 1]
                        for q in range(1, na):
                            ep = e[q] - z * ep
                            acc += c[na - 1 - q] * ep
                        wa[a] = (1.0 - z) * (prod_b * acc)
                wa[D] = w_out
                node = leaf_node[li]
                if k0 >= 0:
                    v = value[node, k0]
                    for j in range(d):
                        phi[r, k0, unique_feature[li, j]] += wa[pos[j]] * v
                else:
                    for j in range(d):
                        w = wa[pos[j]]
                        f = unique_feature[li, j]
                        for k in range(n_out):
                            phi[r, k, f] += w * value[node, k]


@_jit
def shap_bits_direct(
    X,
    split_start,
    split_nan_left,
    split_feature,
    split_threshold,
    value,
    tree_output,
    roots,
    leaf_start,
    leaf_node,
    path_left,
    path_right,
    slot_nodes,
    n_unique,
    unique_feature,
    zero_fraction,
    coef,
):
    """As shap_bits_serial, with each leaf's weights computed (_direct_trees): few rows."""
    phi = np.zeros((X.shape[0], value.shape[1], X.shape[1]))
    _direct_trees(
        X,
        0,
        roots.shape[0],
        phi,
        split_start,
        split_nan_left,
        split_feature,
        split_threshold,
        value,
        tree_output,
        leaf_start,
        leaf_node,
        path_left,
        path_right,
        slot_nodes,
        n_unique,
        unique_feature,
        zero_fraction,
        coef,
    )
    return phi


@_pjit
def shap_bits_direct_split(
    X,
    tree_chunks,
    split_start,
    split_nan_left,
    split_feature,
    split_threshold,
    value,
    tree_output,
    leaf_start,
    leaf_node,
    path_left,
    path_right,
    slot_nodes,
    n_unique,
    unique_feature,
    zero_fraction,
    coef,
):
    """As shap_bits_direct, the trees split into chunks (tree_chunks: their bounds) that
    threads take at once: one row's latency over several cores. Each chunk adds into its
    own phi, summed at the end (the same sums, in another order: exact to rounding)."""
    n_chunks = tree_chunks.shape[0] - 1
    parts = np.zeros((n_chunks, X.shape[0], value.shape[1], X.shape[1]))
    for c in numba.prange(n_chunks):
        _direct_trees(
            X,
            tree_chunks[c],
            tree_chunks[c + 1],
            parts[c],
            split_start,
            split_nan_left,
            split_feature,
            split_threshold,
            value,
            tree_output,
            leaf_start,
            leaf_node,
            path_left,
            path_right,
            slot_nodes,
            n_unique,
            unique_feature,
            zero_fraction,
            coef,
        )
    phi = parts[0].copy()
    for c in range(1, n_chunks):
        phi += parts[c]
    return phi
