"""pytest fixtures: a real PostgreSQL on loopback for the whole session, a fresh database per module.

`scripts/postgres.sh` installs Debian's server when it is missing, runs initdb
once in a temporary folder and starts it; readiness is polled with pg_isready,
never slept for. Import the fixtures into a conftest:
`from tests.postgres_server import postgres_server, hub_database`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from tests.kafka_broker import free_port

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "postgres.sh"


@dataclass
class PostgresServer:
    port: int
    data: Path
    env: dict[str, str]

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://sidecar@127.0.0.1:{self.port}/{database}"

    def _run(self, command: str) -> None:
        proc = subprocess.run(
            [str(SCRIPT), command],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"postgres.sh {command} failed: {proc.stderr[-2000:]}")

    def start(self) -> None:
        self._run("start")

    def stop(self) -> None:
        self._run("stop")

    def create_database(self) -> str:
        """A fresh, empty database; its URL."""
        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, url: str) -> None:
        name = url.rsplit("/", 1)[1]
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    # Not under pytest's tmp_path: that folder is private to this user, and as root the
    # server runs as the `postgres` user, who must be able to reach its data folder.
    parent = Path(tempfile.mkdtemp(prefix="sidecar-pg-"))
    parent.chmod(0o755)
    port = free_port()
    env = dict(os.environ)
    env.update(PG_PORT=str(port), PG_DATA=str(parent / "data"))
    server = PostgresServer(port, parent / "data", env)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(parent, ignore_errors=True)


@pytest.fixture(scope="module")
def hub_database(postgres_server: PostgresServer) -> Iterator[str]:
    """The URL of a database of its own for one test module."""
    url = postgres_server.create_database()
    try:
        yield url
    finally:
        postgres_server.drop_database(url)
