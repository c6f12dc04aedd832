"""The control plane: its app, tokens and roles, and decision lookup (its own thread and loop)."""
