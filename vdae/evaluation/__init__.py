"""Evaluation: the harness every autoencoder goes through, its metrics, and the judge classifier."""
