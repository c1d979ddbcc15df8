"""Executors: how a round's replicas are run (one by one, in worker processes, vectorized, stacked)."""
