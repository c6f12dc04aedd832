from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from explainers.background import covers_from, load_background, read_table
from explainers.errors import InputError
from explainers.loader import load_model
from tests.explain.explain_models import Trained, rows_to_explain, write_parquet


def test_csv_and_parquet_read_alike(tmp_path: Path) -> None:
    csv = tmp_path / "bg.csv"
    csv.write_text("a,b,c\n1,2.5,\n3,,true\n")
    rows, cols = read_table(csv)
    assert cols == ["a", "b", "c"]
    np.testing.assert_array_equal(rows, [[1.0, 2.5, np.nan], [3.0, np.nan, 1.0]])
    pq_rows, _ = read_table(write_parquet(tmp_path / "bg.parquet", rows))
    np.testing.assert_array_equal(pq_rows, rows)


def test_bad_background_files(tmp_path: Path, xgb_models: dict[str, Trained]) -> None:
    text = tmp_path / "bg.csv"
    text.write_text("a,b\n1,x\n")
    with pytest.raises(InputError, match="column 'b' has type string"):
        read_table(text)
    broken = tmp_path / "bg.parquet"
    broken.write_bytes(b"PAR1 not really")
    with pytest.raises(InputError, match="cannot read as Parquet"):
        read_table(broken)
    empty = tmp_path / "empty.csv"
    empty.write_text(",".join(f"f{i}" for i in range(6)) + "\n")
    with pytest.raises(InputError, match="no rows"):
        load_background(empty, load_model(xgb_models["binary"].path).ensemble)


def test_covers_count_rows_through_every_node(xgb_models: dict[str, Trained]) -> None:
    ens = load_model(xgb_models["regression"].onnx_path).ensemble
    X = ens.prepare(xgb_models["regression"].X)
    covered = covers_from(ens, X)
    assert (covered.cover[covered.roots] == len(X)).all()
    internal = covered.left >= 0
    np.testing.assert_array_equal(
        covered.cover[internal],
        covered.cover[covered.left[internal]] + covered.cover[covered.right[internal]],
    )


def test_onnx_nodes_in_any_order(lgb_models: dict[str, Trained], tmp_path: Path) -> None:
    """Converters may list a tree's nodes in any order; the root need not come first."""
    import onnx
    from onnx import helper

    m = lgb_models["binary"]
    model = onnx.load(str(m.onnx_path))
    node = next(n for n in model.graph.node if n.op_type.startswith("TreeEnsemble"))
    attrs = {a.name: list(helper.get_attribute_value(a)) for a in node.attribute}
    per_node = [k for k in attrs if k.startswith("nodes_")]
    order = np.random.default_rng(0).permutation(len(attrs["nodes_nodeids"]))
    for a in node.attribute:
        if a.name in per_node:
            a.CopyFrom(helper.make_attribute(a.name, [attrs[a.name][i] for i in order]))
    # onnxruntime itself insists on its converters' order, so the loader is compared
    # without it: same margins and the same explanations as the original.
    from explainers.fidelity import margins
    from explainers.load_onnx import from_onnx
    from explainers.treeshap import FastPathDependent

    original = load_model(m.onnx_path).ensemble
    reordered = from_onnx(model)
    X = original.prepare(rows_to_explain(m.X, n=50))
    np.testing.assert_array_equal(margins(original, X), margins(reordered, X))
    bg = original.prepare(m.X)
    a = FastPathDependent(covers_from(original, bg)).explain(X)
    b = FastPathDependent(covers_from(reordered, bg)).explain(X)
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)
