"""Compiled tree traversal (numba): margins, depth, node counts."""

# The kernels' argument types are inferred by numba at compile time; annotating every
# array argument would only repeat what the callers pass.
# mypy: allow-untyped-defs
from __future__ import annotations

import numba
import numpy as np

_jit = numba.njit(cache=True, nogil=True)


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


@_jit
def summarise(phi, m, bases, outs, k):
    """Per row: the additivity error (max over outputs of |Σ phi + base - m|, inf when not
    finite) and the k features of output outs[r] with the largest |phi|, ties to the lower
    feature (what a stable argsort of -|phi| gives). ``bases`` has one row, or one per row.

    One compiled call instead of a dozen numpy calls on tiny arrays: for a single row those
    cost about as much as a tenth of the TreeSHAP kernel itself.
    """
    n, n_out, n_f = phi.shape
    err = np.empty(n)
    top = np.empty((n, k), dtype=np.int64)
    taken = np.zeros(n_f, dtype=np.bool_)
    for r in range(n):
        b = r if bases.shape[0] > 1 else 0
        worst = 0.0
        finite = True
        for o in range(n_out):
            s = 0.0
            for j in range(n_f):
                s += phi[r, o, j]
            d = abs(s + bases[b, o] - m[r, o])
            finite = finite and np.isfinite(d)
            worst = max(worst, d)
        err[r] = worst if finite else np.inf
        row = phi[r, outs[r]]
        taken[:] = False
        for p in range(k):
            best = -1
            key = 0.0
            for j in range(n_f):
                if taken[j]:
                    continue
                a = abs(row[j])
                # NaN sorts last, as in argsort.
                if best < 0 or a > key or (np.isnan(key) and not np.isnan(a)):
                    best = j
                    key = a
            taken[best] = True
            top[r, p] = best
    return err, top
