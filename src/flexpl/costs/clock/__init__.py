"""The virtual clock: every action of a round placed on time (the simulator's and the planner's)."""
