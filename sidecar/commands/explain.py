"""`sidecar explain --model FILE [--background FILE] ROWS`: TreeSHAP offline, as JSON.

ROWS is a JSON array of feature arrays (inline, a .json file, or - for stdin) or a
CSV/Parquet file. Prints one JSON document: per row the base values, contributions
(outputs x features, margin space), margin, additivity error and top contributions.
Exit 0 on success, 2 with a message naming the problem otherwise.

Feature values may be ±inf (JSON input: ``Infinity``, ``-Infinity`` or a literal like
``1e999``) or beyond float32's range (inf once a float32 model casts them): +inf goes right
of every threshold, -inf left, as the runtimes route them; NaN or null is missing. JSON has
no infinity, so the output writes ±inf as the strings "Infinity" and "-Infinity".
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from explainers.errors import ExplainerError, InputError


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("explain", help="explain rows offline with exact TreeSHAP and print JSON")
    p.add_argument(
        "--model", required=True, type=Path, help="ONNX, XGBoost .json/.ubj or LightGBM text model"
    )
    p.add_argument(
        "--background",
        type=Path,
        help="Parquet/CSV background data (needed for ONNX covers and interventional)",
    )
    p.add_argument(
        "--algorithm", choices=("path_dependent", "interventional"), default="path_dependent"
    )
    p.add_argument(
        "--output-space",
        choices=("margin", "probability"),
        default="margin",
        help="margin: exact TreeSHAP of the raw score; probability: rescaled to sum to p - p(base)",
    )
    p.add_argument("--top-k", type=int, default=5, help="largest contributions listed per row")
    p.add_argument("--fidelity-tolerance", type=float, default=1e-4)
    p.add_argument(
        "--xgboost-rounds",
        choices=("best", "all"),
        default="best",
        help="early-stopped XGBoost: the rounds up to best_iteration (as XGBModel.predict) or all",
    )
    p.add_argument(
        "--trust-sha256",
        action="append",
        default=[],
        help="SHA-256 of a scikit-learn pickle you trust (repeatable)",
    )
    p.add_argument(
        "rows",
        metavar="ROWS",
        help="JSON array of feature arrays (inline, a .json file, or -), or a CSV/Parquet file",
    )
    p.set_defaults(func=run)


def read_rows(arg: str) -> tuple[list[list[Any]] | Any, list[str] | None]:
    """(rows, column names when the file has them)."""
    text: str | None = None
    if arg == "-":
        text = sys.stdin.read()
    elif arg.lstrip().startswith("["):
        text = arg
    else:
        path = Path(arg)
        if not path.exists():
            raise InputError(f"ROWS {arg!r} is neither a JSON array nor an existing file")
        if path.suffix.lower() in (".csv", ".parquet", ".pq"):
            from explainers.background import read_table

            rows, columns = read_table(path)
            return rows, columns
        text = path.read_text(encoding="utf-8")
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"ROWS is not valid JSON: {exc}") from None
    if not isinstance(rows, list) or not all(isinstance(r, list) for r in rows):
        raise InputError("ROWS must be a JSON array of feature arrays, e.g. [[1.0, 2.5, null]]")
    return rows, None


def run(args: argparse.Namespace) -> int:
    # Imported here: numba's and the model libraries' imports take most of a second, which
    # every other `sidecar` subcommand would pay when the parser registers this one.
    from explainers.explainer import ExplainerOptions, build_explainer

    try:
        rows, columns = read_rows(args.rows)
        options = ExplainerOptions(
            algorithm=args.algorithm,
            top_k=args.top_k,
            fidelity_tolerance=args.fidelity_tolerance,
            cache_entries=0,
            output_space=args.output_space,
        )
        explainer = build_explainer(
            args.model,
            model_version="offline",
            background_path=args.background,
            options=options,
            trusted_sha256=frozenset(args.trust_sha256),
            xgboost_all_rounds=args.xgboost_rounds == "all",
        )
        if columns is not None and len(columns) == explainer.n_features:
            explainer.feature_names = columns
        explanations = explainer.explain(rows) if len(rows) else []
    except ExplainerError as exc:
        print(f"sidecar explain: {exc}", file=sys.stderr)
        return 2
    out = {
        "model": str(args.model),
        "format": explainer.format,
        "explainer": explainer.name,
        "explainer_version": explainer.version,
        "output_space": args.output_space,
        "transform": explainer.ensemble.transform,
        "background_hash": explainer.background_hash,
        "feature_names": explainer.feature_names,
        "rows": [
            {
                "base_values": e.base_values,
                "contributions": e.contributions,
                "margin": e.margin,
                "additivity_error": e.additivity_error,
                "top": e.top,
            }
            for e in explanations
        ],
    }
    json.dump(_json_safe(out), sys.stdout, allow_nan=False)
    sys.stdout.write("\n")
    return 0


def _json_safe(v: Any) -> Any:
    """JSON has no NaN or infinity: a non-finite number (an additivity error that
    overflowed, say) is written as the string "NaN", "Infinity" or "-Infinity", so the
    output always parses with a strict parser and never reads as missing (null)."""
    if isinstance(v, float) and not math.isfinite(v):
        return "NaN" if math.isnan(v) else ("Infinity" if v > 0 else "-Infinity")
    if isinstance(v, dict):
        return {k: _json_safe(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_json_safe(x) for x in v]
    return v
