"""The latent space: the encoder's correction score and the VDAE objective."""
