"""Feeds damaged copies of valid model files to the loaders, in a process of its own.

    python -m tests.explain.fuzz_worker SPEC.json

SPEC lists the files ({name, path, background, cases, seed}). The address space is capped
(what the process holds after warming up, plus ``headroom_mb``), so a reader that
believes a damaged size fails here with MemoryError instead of growing the machine's
memory; that MemoryError is reported as a failure, like any exception other than a clean
refusal. Prints one JSON object: per file, the outcomes and any failures.
"""

from __future__ import annotations

import faulthandler
import json
import re
import resource
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Any

import numpy as np

from explainers.errors import FidelityError, ModelLoadError
from explainers.explainer import ExplainerOptions, build_explainer

OPTIONS = ExplainerOptions(fidelity_rows=32, cache_entries=0, threads=1)


def mutations(data: bytes, cases: int, seed: int) -> list[tuple[str, bytes]]:
    """Truncations (spread over the file, and near both ends), then random bytes and
    changed digits (in text formats the counts, sizes and indices are digits)."""
    rng = np.random.default_rng(seed)
    n = len(data)
    out: list[tuple[str, bytes]] = []
    cuts = sorted({*np.linspace(1, n - 1, cases // 2 - 8).astype(int), *range(1, 5)})
    cuts += [n - k for k in range(1, 5)]
    for c in cuts:
        out.append((f"truncated at {c}", data[:c]))
    digits = np.flatnonzero(
        (np.frombuffer(data, np.uint8) >= 48) & (np.frombuffer(data, np.uint8) <= 57)
    )
    while len(out) < cases and len(digits) and len(out) < (len(cuts) + cases) // 2:
        b = bytearray(data)
        where = rng.choice(digits, size=int(rng.integers(1, 3)))
        for w in where:
            b[w] = 48 + (b[w] - 48 + int(rng.integers(1, 10))) % 10
        out.append((f"digits at {sorted(int(w) for w in where)} changed", bytes(b)))
    while len(out) < cases:
        b = bytearray(data)
        where = rng.integers(0, n, size=int(rng.integers(1, 4)))
        for w in where:
            b[w] = int(rng.integers(0, 256))
        out.append((f"bytes {sorted(int(w) for w in where)} changed", bytes(b)))
    return out


def _vm_bytes() -> int:
    status = Path("/proc/self/status").read_text()
    m = re.search(r"VmSize:\s+(\d+) kB", status)
    return int(m.group(1)) * 1024 if m else 0


def run(spec: dict[str, Any]) -> dict[str, Any]:
    files = spec["files"]
    # Warm up every loader, runtime and kernel on the valid files before capping memory.
    for f in files:
        _build(Path(f["path"]), f)
    vm = _vm_bytes()
    limit = vm + spec["headroom_mb"] * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for f in files:
            src = Path(f["path"])
            counts = {"loaded": 0, "refused": 0, "fidelity": 0}
            failures: list[str] = []
            for i, (what, data) in enumerate(mutations(src.read_bytes(), f["cases"], f["seed"])):
                p = Path(tmp) / f"case{i}{src.suffix}"
                # The last case named on stderr is the one that crashed the process, if any.
                print(f"{f['name']}: {what}", file=sys.stderr, flush=True)
                p.write_bytes(data)
                try:
                    # Pickles keep the operator's pin (the valid file's digest): a damaged
                    # pickle must be refused before it is unpickled, since unpickling a
                    # pinned file trusts it completely.
                    _build(p, f)
                    counts["loaded"] += 1
                except ModelLoadError as exc:
                    counts["refused"] += 1
                    if str(p) not in str(exc):
                        failures.append(f"{what}: the message does not name the file: {exc}")
                    if "bad_alloc" in str(exc) or "memory" in str(exc).lower():
                        failures.append(f"{what}: refused only when memory ran out: {exc}")
                except FidelityError:
                    counts["fidelity"] += 1
                except BaseException as exc:  # anything but a clean refusal is a bug
                    tb = traceback.format_exception(type(exc), exc, exc.__traceback__)[-3:]
                    failures.append(f"{what}: {type(exc).__name__}: {exc} {''.join(tb)}")
            results[f["name"]] = {"counts": counts, "failures": failures[:10]}
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"files": results, "rss_growth_mb": (rss1 - rss0) / 1024, "limit_mb": limit >> 20}


def _build(path: Path, f: dict[str, Any]) -> None:
    ex = build_explainer(
        path,
        model_version="fuzz",
        background_path=f.get("background"),
        options=OPTIONS,
        trusted_sha256=frozenset(f.get("trusted", [])),
    )
    # A model that loaded must also explain.
    ex.explain(np.zeros((1, ex.n_features)))


if __name__ == "__main__":
    faulthandler.enable()
    print(json.dumps(run(json.loads(Path(sys.argv[1]).read_text()))))
