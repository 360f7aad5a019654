"""Custom kernels: the fused time-embedding and score-sum step (reference, Pallas, dispatch)."""
