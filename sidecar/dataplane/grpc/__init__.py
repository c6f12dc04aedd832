"""The gRPC listener: `server.py`, `tap.py` (with `frames.py`, `headerblock.py`), `infer.py`,
`tensors.py`. The listener is an HTTP/2 frame tap, not grpcio; grpcio is left with the
readiness check's channel (and the benchmarks' clients and candidate hops).

Importing this package, before anything imports grpc, turns grpcio's EventEngine
rollouts off for the process unless `GRPC_EXPERIMENTS` is already set (then the
operator's value stands). With them on, grpcio moves every socket event through
threads of its own before the completion reaches Python. Measured with
`python -m loadtests.grpc_hops` (same-run ratios, three runs): with them off a
bare pass-through hop took 0.84-0.91x the CPU per call, one grpcio server side
0.77-0.93x. The C-core reads the variable once, when grpc is imported, so this
must come first (the sidecar's entry point imports this package before grpc; a
process that imported grpc earlier keeps grpcio's defaults). The variable stays
set, so processes started from this one inherit it (in the tests, the model
servers they start): any gRPC C-core reads it the same way, and one that does not
know a name logs it and keeps its default.
"""

from __future__ import annotations

import os

# The rollouts, by grpcio's experiment names (-name: off); off, the C-core keeps to
# the I/O paths it had before them.
NO_EVENT_ENGINE = (
    "-event_engine_client,-event_engine_listener,-event_engine_callback_cq,"
    "-event_engine_for_all_other_endpoints"
)
os.environ.setdefault("GRPC_EXPERIMENTS", NO_EVENT_ENGINE)
