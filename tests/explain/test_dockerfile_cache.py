"""The Dockerfile's numba cache: built where the runtime stage finds it, usable by its user.

No Docker engine runs here, so the steps themselves are run by
scripts/docker_warm_start.sh; this reads the Dockerfile for the mistakes that would turn
every start of the image into a cold one (numba keys its cache by the source's path, the
CPU name and the cache folder, and uses a folder only if it can write there).
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

DOCKERFILE = Path(__file__).resolve().parents[2] / "Dockerfile"


def _stages() -> list[list[str]]:
    """Each stage's instructions, continuation lines joined, comments and heredocs dropped."""
    stages: list[list[str]] = []
    lines = DOCKERFILE.read_text().splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        i += 1
        if not line or line.startswith("#"):
            continue
        while line.endswith("\\"):
            line = line[:-1] + " " + lines[i].strip()
            i += 1
        heredoc = re.search(r"<<'?(\w+)'?", line)
        if heredoc:
            while lines[i].strip() != heredoc.group(1):
                i += 1
            i += 1
        if line.upper().startswith("FROM "):
            stages.append([])
        stages[-1].append(line)
    return stages


def _env(stage: list[str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for line in stage:
        if line.upper().startswith("ENV "):
            for word in shlex.split(line[4:]):
                key, _, value = word.partition("=")
                env[key] = value
    return env


def test_the_runtime_finds_the_cache_the_build_filled() -> None:
    build, runtime = _stages()
    warm = [line for line in build if "explainers.warmup" in line]
    assert len(warm) == 1
    # From /, so that numba keys the cache by the installed package's path, not /src's.
    assert re.match(r"RUN cd / && ", warm[0])
    built = re.search(r"NUMBA_CACHE_DIR=(\S+)", warm[0])
    assert built is not None
    copy = [line for line in runtime if line.startswith("COPY --from=build") and built[1] in line]
    assert len(copy) == 1
    src, dest = shlex.split(copy[0])[-2:]
    assert src == built[1]
    assert _env(runtime)["NUMBA_CACHE_DIR"] == dest
    # The same CPU name in both stages: numba keys every cached kernel by it.
    assert _env(build).get("NUMBA_CPU_NAME") == _env(runtime).get("NUMBA_CPU_NAME")
    assert _env(runtime).get("NUMBA_CPU_NAME") == "generic"


def test_the_cache_is_the_users_and_outside_the_volume() -> None:
    _, runtime = _stages()
    dest = _env(runtime)["NUMBA_CACHE_DIR"]
    user = next(line.split()[1] for line in runtime if line.startswith("USER "))
    copy = next(line for line in runtime if line.startswith("COPY --from=build") and dest in line)
    # numba tests the folder by writing a file in it; a folder the user cannot write is skipped.
    assert f"--chown={user}:{user}" in copy
    volumes = [
        v for line in runtime if line.startswith("VOLUME ") for v in re.findall(r'"([^"]+)"', line)
    ]
    assert volumes
    # A volume mounted over the cache would hide it (a bind mount) or keep an older one.
    for v in volumes:
        assert not (dest + "/").startswith(v.rstrip("/") + "/")
