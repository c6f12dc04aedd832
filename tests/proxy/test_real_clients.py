"""Real HTTP clients that offer h2c (curl --http2, Java's HttpClient) through the sidecar
to the real demo model server: every call is answered over HTTP/1.1, byte for byte as the
model server answers it directly, and every inference call gets its decision."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from sidecar.demo.model import load_meta
from sidecar.demo.process import ModelServerProcess
from sidecar.service import Service
from tests.servers import running_sidecar

META = load_meta()
NAME = META.name
ROWS = [
    [35.0, 52000.0, 0.31, 120.0, 1.0, 15000.0, 6.0, 0.42, 5.0, 1.0],
    [61.0, 23000.0, 0.62, 18.0, 4.0, 30000.0, 0.5, 0.91, 9.0, 6.0],
]
V2 = json.dumps(
    {
        "id": "call-1",
        "inputs": [{"name": META.input_name, "shape": [2, 10], "datatype": "FP32", "data": ROWS}],
    }
)
V1 = json.dumps({"instances": ROWS})
# (path, body or "" for a GET, is it an inference call?)
CALLS = [
    (f"/v2/models/{NAME}/infer", V2, True),
    (f"/v1/models/{NAME}:predict", V1, True),
    (f"/v2/models/{NAME}", "", False),
    ("/v2/health/ready", "", False),
]
JAVA_CLIENT = """
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.util.Base64;

// Java's default client prefers HTTP/2, so it offers h2c on http:// URLs; "1.1" as the
// first argument makes a client that does not (for the direct calls it is compared with).
public class H2cClient {
    public static void main(String[] args) throws Exception {
        HttpClient client = args[0].equals("1.1")
            ? HttpClient.newBuilder().version(HttpClient.Version.HTTP_1_1).build()
            : HttpClient.newHttpClient();
        for (int i = 1; i < args.length; i += 2) {
            HttpRequest.Builder b = HttpRequest.newBuilder(URI.create(args[i]));
            if (!args[i + 1].isEmpty()) {
                b.header("content-type", "application/json")
                    .POST(HttpRequest.BodyPublishers.ofString(args[i + 1]));
            }
            HttpResponse<byte[]> r = client.send(b.build(), HttpResponse.BodyHandlers.ofByteArray());
            System.out.println(r.statusCode() + " " + r.version() + " "
                + r.headers().firstValue("x-decision-id").orElse("-") + " "
                + Base64.getEncoder().encodeToString(r.body()));
        }
    }
}
"""


@pytest.fixture(scope="module")
def model_server() -> Iterator[str]:
    with ModelServerProcess() as server:
        yield server.url


@pytest.fixture(scope="module")
def sidecar(model_server: str) -> Iterator[Service]:
    with running_sidecar(model_server) as svc:
        yield svc


def _curl(url: str, body: str, *flags: str) -> tuple[int, dict[str, str], bytes, str]:
    """(status, headers, body, the protocol curl reports) of one call."""
    cmd = ["curl", "-sS", "--max-time", "20", *flags, "-D", "-", "-o", "/dev/stdout"]
    cmd += ["-w", "\\n%{http_version}"]
    if body:
        cmd += ["-H", "content-type: application/json", "--data-binary", body]
    out = subprocess.run([*cmd, url], capture_output=True, check=True, timeout=30).stdout
    out, _, version = out.rpartition(b"\n")
    head, _, rest = out.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
    return int(lines[0].split()[1]), headers, rest, version.decode()


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is installed by scripts/test.sh")
def test_curl_http2_through_the_sidecar(model_server: str, sidecar: Service) -> None:
    for path, body, inference in CALLS:
        status, headers, got, version = _curl(sidecar.proxy_url + path, body, "--http2")
        d_status, _, direct, _ = _curl(model_server + path, body, "--http1.1")
        assert (status, got) == (d_status, direct), path
        assert status == 200 and version == "1.1", (path, version)
        assert ("x-decision-id" in headers) == inference, (path, headers)
        if inference:
            assert headers["x-decision-id"]


@pytest.mark.skipif(shutil.which("java") is None, reason="Java is installed by scripts/test.sh")
def test_java_http_client_through_the_sidecar(
    model_server: str, sidecar: Service, tmp_path: Path
) -> None:
    source = tmp_path / "H2cClient.java"
    source.write_text(JAVA_CLIENT)

    def run(base: str, version: str) -> list[tuple[int, str, str, bytes]]:
        args = [a for path, body, _ in CALLS for a in (base + path, body)]
        out = subprocess.run(
            ["java", str(source), version, *args], capture_output=True, check=True, timeout=120
        ).stdout.decode()
        rows = [line.split(" ") for line in out.splitlines() if line.strip()]
        return [(int(s), v, d, base64.b64decode(b)) for s, v, d, b in rows]

    # Direct calls over HTTP/1.1: the model server (uvicorn on httptools) drops the body of a
    # POST that offers h2c, which is the bug the sidecar must not have.
    through, direct = run(sidecar.proxy_url, "2"), run(model_server, "1.1")
    assert len(through) == len(CALLS)
    for (path, _, inference), got, want in zip(CALLS, through, direct, strict=True):
        status, version, decision, body = got
        assert (status, body) == (want[0], want[3]), path
        assert status == 200 and version == "HTTP_1_1", (path, got)
        assert (decision != "-") == inference, (path, decision)
