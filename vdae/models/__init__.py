"""Flax networks: the score U-Net, the time-dependent encoder, the VAE decoder, shared layers."""
