"""nginx as a path of the proxy benchmark: the reference any proxy in front of a model is held to.

One worker, upstream keep-alive 32, access log off (issue 19's reference set-up), pinned
like the sidecar. Debian's `nginx-light` is installed with apt when no nginx is found
(as root; otherwise the run says how to install it).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

from sidecar.demo.process import wait_ready

_CANDIDATES = ("nginx", "/usr/sbin/nginx")

_CONF = """daemon off;
master_process off;
worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {work}/body;
    proxy_temp_path {work}/proxy;
    fastcgi_temp_path {work}/fastcgi;
    uwsgi_temp_path {work}/uwsgi;
    scgi_temp_path {work}/scgi;
    upstream model {{
        server {upstream};
        keepalive 32;
    }}
    server {{
        listen {listen};
        location / {{
            proxy_pass http://model;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""


def find_nginx(install: bool = True) -> str:
    """The nginx binary; installs Debian's nginx-light when missing and `install` (needs root)."""
    for name in _CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    if install and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "nginx-light"],
            check=True,
            env=env,
            stdout=subprocess.DEVNULL,
        )
        return find_nginx(install=False)
    raise RuntimeError("nginx not found: apt-get install nginx-light (or pass --no-nginx)")


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class NginxProcess:
    """nginx in front of `upstream` (http://host:port), one process (master_process off) on `cpus`."""

    def __init__(self, upstream: str, cpus: set[int] | None = None, host: str = "127.0.0.1"):
        parts = urlsplit(upstream)
        self._upstream = f"{parts.hostname}:{parts.port}"
        self._cpus = cpus
        self._host = host
        self._work = Path(tempfile.mkdtemp(prefix="bench-nginx-"))
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout_s: float = 30.0) -> str:
        binary = find_nginx()
        port = _free_port(self._host)
        conf = self._work / "nginx.conf"
        conf.write_text(
            _CONF.format(work=self._work, upstream=self._upstream, listen=f"{self._host}:{port}")
        )
        self.url = f"http://{self._host}:{port}"
        self.proc = subprocess.Popen(
            [binary, "-p", str(self._work), "-c", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        if self._cpus:
            os.sched_setaffinity(self.proc.pid, self._cpus)
        wait_ready(f"{self.url}/v2/health/ready", timeout_s, self.proc)
        return self.url

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None
        shutil.rmtree(self._work, ignore_errors=True)
