"""vdae: Variational Diffusion Auto-encoder (ScoreVAE) in JAX."""
