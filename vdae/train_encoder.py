"""Stage 2: train the time-dependent encoder on the frozen score model.

The score network's (EMA) parameters come from the stage-1 checkpoint
(`stage2.stage1_workdir`, default this --workdir). They are passed to the step
as a separate, never-optimised argument: not in the optimizer state, not in
the gradient (and stop_gradient'ed inside the loss).
"""

from __future__ import annotations

import functools
import logging

import jax
import jax.numpy as jnp
import numpy as np

from vdae import data, decode, losses, sharding, train
from vdae import sde as sde_lib
from vdae.models import encoder as encoder_lib
from vdae.trainer import StageSpec, Trainer

log = logging.getLogger(__name__)

STAGE = "stage2"


def make_loss_fn(
  score_model, enc_model, config, kernel: str | None = None, correction: str = "reverse"
):
  """loss_fn(enc_params, batch, key, score_params) -> (loss, aux)."""
  sde = sde_lib.from_config(config.sde)
  spec = train.step_spec(config)
  s2 = config.stage2

  def loss_fn(params, batch, key, score_params):
    eps_fn = lambda x, t: score_model.apply({"params": score_params}, x, t)
    encode_fn = lambda x, t: enc_model.apply({"params": params}, x, t)
    return losses.vdae_loss(
      eps_fn,
      encode_fn,
      batch["image"],
      key,
      sde,
      spec,
      beta_kl=s2.beta_kl,
      form=s2.loss,
      logvar_term=config.encoder.logvar_term,
      time_sampling=s2.time_sampling,
      kernel=config.sampling.kernel if kernel is None else kernel,
      correction=correction,
    )

  return loss_fn


class EncoderTrainer(Trainer):
  stage = STAGE
  compare_keys = ("model", "sde", "encoder")

  def __init__(self, config, workdir):
    super().__init__(config, workdir)
    stage1_dir = config.stage2.stage1_workdir or workdir
    # Fails cleanly (CheckpointError) before anything of stage 2 is written.
    self.score_model, self.score_params, _ = train.load_score_model(
      config, stage1_dir, self.mesh, self.image_shape
    )
    self.encoder = encoder_lib.from_config(config.encoder, config.model, config.sde)
    self._recon_batch = data.eval_batches(self.splits["test"], 16, limit=16)[0]["image"]

  def build(self) -> StageSpec:
    cfg, enc = self.config, self.encoder
    dummy = jnp.zeros((1, *self.image_shape), jnp.float32)
    s2 = cfg.stage2
    return StageSpec(
      init_params=lambda key: enc.init(key, dummy, jnp.zeros((1,)))["params"],
      loss_fn=make_loss_fn(self.score_model, enc, cfg),
      lr=s2.lr,
      warmup=s2.warmup_steps,
      num_steps=s2.num_steps,
      batch_size=s2.batch_size,
      log_every=s2.log_every,
      image_every=s2.recon_every,
      checkpoint_every=s2.checkpoint_every,
      frozen=self.score_params,
    )

  def images(self, state, step):
    x = self._recon_batch
    # Global (replicated) input and a gathered output: the params span every
    # process's devices when multi-process.
    rec = self._reconstruct(len(x))(
      self.score_params,
      state.ema_params,
      sharding.replicated_from_host(x, self.mesh),
      jax.random.key(step),
    )
    return {"reconstructions": np.concatenate([x, sharding.to_host(rec)], axis=0)}

  @functools.cache
  def _reconstruct(self, n: int):
    return decode.make_reconstruct_fn(
      self.score_model, self.encoder, self.config, (n, *self.image_shape)
    )


def train_encoder(config, workdir: str):
  return EncoderTrainer(config, workdir).train()
