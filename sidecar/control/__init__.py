"""The control plane: its app, tokens and roles, decision lookup, and the process it runs in."""
