"""The distributed backend: one process per node on ``torch.distributed``, the simulator's stage code."""
