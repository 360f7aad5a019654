"""Command-line modes, one module each: train, sample, encode, reconstruct, interpolate,
evaluate, all."""
