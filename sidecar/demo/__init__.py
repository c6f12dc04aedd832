"""The embedded demo: a synthetic credit model, its assets, and an onnxruntime model server."""
