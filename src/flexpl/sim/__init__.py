"""The simulator: the engine, its state and round loop, checkpoints and failures; ``exec/`` runs a round's replicas."""
