"""Studies over runs: run one, compare strategies, sweep a grid, tune, seeds, and Ray tasks."""
