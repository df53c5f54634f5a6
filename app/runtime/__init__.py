"""Parent side of the worker processes: pool, per-worker supervision, dispatch."""
