"""Diffusion: SDEs, the score model's interface, DSM loss, samplers, PF-ODE likelihood."""
