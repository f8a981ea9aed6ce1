"""The in-house demo SegGPT: procedural in-context tasks, training, shipped weights."""
