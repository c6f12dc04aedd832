"""The background pipeline: the decision queue, sampling, the explain stage and review routing."""
