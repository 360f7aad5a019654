"""The autoencoders compared: the VDAE, the VAE baseline, and the interface they share."""
