"""Plans: the layout of stages and replicas, presets, per-device cuts, the round program and the one step."""
