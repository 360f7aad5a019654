"""Training: the stage table, the loop and its hooks, the step, state, checkpoints, restore."""
