"""Diffusion: SDEs, the score model's interface, the DSM loss, samplers and the PF-ODE likelihood."""
