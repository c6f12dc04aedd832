"""The data plane: the HTTP/1.1 server, the upstream client, the protocols and the hot path."""
