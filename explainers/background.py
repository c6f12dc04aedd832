"""Background data: read with pyarrow, hashed, and turned into node covers."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from explainers import kernels
from explainers.ensemble import FloatArray, TreeEnsemble
from explainers.errors import InputError

UNREACHED_COVER = 1e-6


@dataclass(frozen=True)
class Background:
    """Background rows (float64, NaN for missing), their column names and content hash."""

    rows: FloatArray
    columns: list[str]
    sha256: str


def read_table(path: Path) -> tuple[FloatArray, list[str]]:
    """A Parquet or CSV file as a float matrix; nulls become NaN; non-numeric columns are refused."""
    import pyarrow as pa
    import pyarrow.compute as pc

    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            import pyarrow.parquet as pq

            table = pq.read_table(path)
        else:
            import pyarrow.csv as pacsv

            table = pacsv.read_csv(path)
    except (OSError, pa.ArrowInvalid) as exc:
        raise InputError(
            f"{path}: cannot read as {'Parquet' if path.suffix == '.parquet' else 'CSV'}: {exc}"
        ) from None
    cols = []
    for name, col in zip(table.column_names, table.columns, strict=True):
        if not (
            pa.types.is_integer(col.type)
            or pa.types.is_floating(col.type)
            or pa.types.is_boolean(col.type)
            or pa.types.is_null(col.type)
        ):
            raise InputError(
                f"{path}: column {name!r} has type {col.type}; features must be numeric"
            )
        cols.append(pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False))
    if not cols:
        raise InputError(f"{path}: no columns")
    return np.ascontiguousarray(np.column_stack(cols), dtype=np.float64), list(table.column_names)


def load_background(path: Path, ens: TreeEnsemble, max_rows: int = 100_000) -> Background:
    rows, columns = read_table(path)
    if rows.shape[1] != ens.n_features:
        raise InputError(
            f"{path}: background has {rows.shape[1]} columns but the model expects {ens.n_features}"
        )
    if rows.shape[0] == 0:
        raise InputError(f"{path}: background has no rows")
    rows = ens.prepare(rows[:max_rows])
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return Background(rows=rows, columns=columns, sha256=digest)


def covers_from(ens: TreeEnsemble, rows: FloatArray) -> TreeEnsemble:
    """The ensemble with node covers counted by passing ``rows`` through its trees."""
    counts = kernels.node_counts(
        rows, ens.left, ens.right, ens.default, ens.feature, ens.threshold, ens.roots
    )
    # A node no background row reaches would make path-dependent TreeSHAP divide 0 by 0
    # (shap refuses such a model on every call). Give it a negligible weight instead, as
    # shap itself does for covers it counts from data: the contributions then agree with
    # shap's, and still add up exactly.
    counts = np.where(counts > 0, counts, UNREACHED_COVER)
    return ens.with_cover(counts)
