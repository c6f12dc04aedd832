"""`proxy.workers = N`: N data-plane processes on one port, one control process for them all."""
