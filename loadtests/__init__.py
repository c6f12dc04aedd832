"""The benchmark harness: upstreams, a load generator, and scenarios that compare the sidecar with a direct call."""
