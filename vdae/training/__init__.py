"""Training: the stage table, the one loop and its hooks, the step, state, checkpoints, restore."""
