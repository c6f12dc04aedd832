"""A TLS gRPC upstream is verified against proxy.upstream_ca_file; bad gRPC settings fail naming the key."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
import trustme
from tritonclient.grpc import service_pb2 as pb

from sidecar.config import ConfigError, load_settings
from tests.grpc.conftest import address, grpc_sidecar
from tests.grpc_model_server import grpc_model_server

MODEL_READY = "/inference.GRPCInferenceService/ModelReady"


def test_a_tls_upstream_is_verified_against_the_ca_file(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    key_cert = (cert.private_key_pem.bytes(), cert.cert_chain_pems[0].bytes())
    with grpc_model_server(tls=key_cert) as server:
        url = f"https://{server.address}"
        req = pb.ModelReadyRequest(name="credit").SerializeToString()
        with (
            grpc_sidecar(url, proxy={"upstream_ca_file": str(ca_file)}) as svc,
            grpc.insecure_channel(address(svc)) as ch,
        ):
            assert pb.ModelReadyResponse.FromString(ch.unary_unary(MODEL_READY)(req)).ready
        # Against the system's CAs the throwaway one is unknown: nothing is sent.
        with grpc_sidecar(url) as svc, grpc.insecure_channel(address(svc)) as ch:
            before = len(server.recorder.calls)
            with pytest.raises(grpc.RpcError) as err:
                ch.unary_unary(MODEL_READY)(req)
            assert err.value.code() is grpc.StatusCode.UNAVAILABLE
            assert len(server.recorder.calls) == before


@pytest.mark.parametrize(
    ("proxy", "message"),
    [
        ({"grpc_listen": "127.0.0.1:0"}, "proxy.grpc_upstream is required"),
        ({"grpc_listen": "8090", "grpc_upstream": "http://h:1"}, "proxy.grpc_listen"),
        ({"grpc_listen": "h:99999", "grpc_upstream": "http://h:1"}, "proxy.grpc_listen"),
        ({"grpc_listen": "h:1", "grpc_upstream": "h:1"}, "proxy.grpc_upstream"),
        ({"grpc_max_message_bytes": 10}, "proxy.grpc_max_message_bytes"),
        ({"grpc_max_concurrent_rpcs": 0}, "proxy.grpc_max_concurrent_rpcs"),
    ],
)
def test_bad_grpc_settings_fail_naming_the_key(proxy: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(environ={}, overrides={"proxy": proxy})


def test_a_listen_address_in_use_fails_the_start_naming_the_key() -> None:
    with (
        grpc_model_server() as server,
        pytest.raises(RuntimeError, match=r"proxy\.grpc_listen"),
        grpc_sidecar(server.url, proxy={"grpc_listen": server.address}),
    ):
        pass
