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
  c.training.batch_size = 16
  c.training.num_steps = 6
  c.training.log_every = 2
  c.training.sample_every = 0
  c.training.checkpoint_every = 3
  c.training.async_checkpointing = False
  c.optim.warmup_steps = 2
  c.stage2.num_steps = 4
  c.stage2.batch_size = 16
  c.stage2.log_every = 2
  c.stage2.recon_every = 0
  c.stage2.checkpoint_every = 2
  c.stage2.warmup_steps = 2
  c.sampling.num_steps = 4
  c.sampling.num_samples = 8
  c.eval.num_test = 16
  c.eval.num_samples = 16
  c.eval.batch_size = 8
  c.eval.bpd_num_images = 4
  c.eval.classifier_steps = 100
  c.eval.probe_max_iter = 200
  c.vae.num_steps = 4
  c.vae.batch_size = 16
  c.vae.warmup_steps = 2
  c.vae.decoder_channels = 8
  c.vae.log_every = 2
  c.vae.recon_every = 0
  c.vae.checkpoint_every = 2
  return c
