"""Custom kernels. `fused_step` owns the fused time-embedding and score-sum step."""

from vdae.kernels.fused_step import (  # noqa: F401
  StepSpec,
  reference_reverse_step,
  reference_stage2_residual,
  reverse_step,
  stage2_residual,
)
