"""MNIST (28x28 grey) from a user-supplied .npz (images [N,28,28] or [N,28,28,1]).

  python -m vdae.main --config=configs/mnist.py --workdir=runs/mnist --mode=all \
      --config.data.path=/data/mnist.npz
28x28 has one odd downsampling level, so the U-Net uses 28 -> 14 -> 7.
"""

from configs import base


def get_config():
  c = base.get_config()
  c.data.source = "npz"
  c.model.channels = 64
  c.model.channel_mults = (1, 2, 2)
  c.model.num_res_blocks = 2
  c.model.attn_resolutions = (7,)
  c.model.temb_dim = 128
  c.stage1.num_steps = 100_000
  c.stage1.image_every = 5000
  c.stage1.checkpoint_every = 5000
  c.stage1.lr = 2e-4
  c.stage1.warmup_steps = 5000
  c.encoder.latent_dim = 32
  c.encoder.channels = 64
  c.encoder.channel_mults = (1, 2, 2)
  c.stage2.num_steps = 50_000
  c.stage2.lr = 2e-4
  c.prior.num_steps = 20_000  # the latent prior: cheap per step (an MLP on codes)
  c.prior.width = 1024
  c.sampling.num_steps = 1000
  return c
