"""Files in the workdir, TensorBoard and pictures, loss curves, user-facing errors."""
