"""Tiny variant for tests: every stage runs for a few steps in seconds.

python -m vdae.main --config=configs/tiny.py --workdir=/tmp/t --mode=all
"""

from configs import digits


def get_config():
  c = digits.get_config()
  c.model.channels = 8
  c.model.channel_mults = (1, 2)
  c.model.groups = 4
  c.model.temb_dim = 16
  c.encoder.channels = 8
  c.encoder.groups = 4
  c.encoder.latent_dim = 4
  c.stage1.batch_size = 16
  c.stage1.num_steps = 6
  c.stage1.log_every = 2
  c.stage1.image_every = 0
  c.stage1.checkpoint_every = 3
  c.loop.async_checkpointing = False
  c.stage1.warmup_steps = 2
  c.stage2.num_steps = 4
  c.stage2.batch_size = 16
  c.stage2.log_every = 2
  c.stage2.image_every = 0
  c.stage2.checkpoint_every = 2
  c.stage2.warmup_steps = 2
  c.sampling.num_steps = 4
  c.sampling.num_samples = 8
  c.eval.num_test = 16
  c.eval.num_samples = 16
  c.eval.batch_size = 8
  # One image: the PF-ODE solve's exact divergence costs D JVPs per image per step,
  # and tests check its wiring and agreement across meshes, not its value.
  c.eval.bpd_num_images = 1
  c.eval.elbo_num_images = 0  # a few-step encoder's conditional ODE is stiff: slow to solve
  c.eval.mean_decodes = 2
  c.eval.mode_num_steps = 2
  c.eval.bootstrap_resamples = 100
  c.eval.classifier_steps = 100
  c.eval.probe_max_iter = 200
  c.prior.num_steps = 4
  c.prior.batch_size = 16
  c.prior.width = 32
  c.prior.depth = 1
  c.prior.warmup_steps = 2
  c.prior.log_every = 2
  c.prior.checkpoint_every = 2
  c.prior.sample_num_steps = 4
  c.sampling.invert_num_steps = 2
  c.vae.num_steps = 4
  c.vae.batch_size = 16
  c.vae.warmup_steps = 2
  c.vae.decoder_channels = 8
  c.vae.log_every = 2
  c.vae.image_every = 0
  c.vae.checkpoint_every = 2
  c.refiner.num_steps = 4
  c.refiner.batch_size = 16
  c.refiner.warmup_steps = 2
  c.refiner.channels = 8
  c.refiner.channel_mults = (1,)
  c.refiner.log_every = 2
  c.refiner.checkpoint_every = 2
  c.refiner.sample_num_steps = 4
  return c
