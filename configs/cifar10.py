"""CIFAR-10 (32x32x3) at the literature's DDPM++ scale, for TPU pods / GPUs.

Data as an ArrayRecord file set (e.g. written by `tfds build cifar10
--file_format=array_record`) or an .npz:
  python -m vdae.main --config=configs/cifar10.py --workdir=gs://BUCKET/cifar \
      --mode=pretrain --config.data.path='/data/cifar10/cifar10-train.array_record*'
On a pod, launch/tpu_run.sh sends the same command to every worker.
"""

from configs import base


def get_config():
  c = base.get_config()
  c.data.source = "array_record"
  c.data.random_flip = True
  c.model.channels = 128
  c.model.channel_mults = (1, 2, 2, 2)
  c.model.num_res_blocks = 4
  c.model.attn_resolutions = (16,)
  c.model.dropout = 0.1
  c.model.temb_dim = 128
  c.model.dtype = "bfloat16"
  c.stage1.batch_size = 128
  c.stage1.num_steps = 1_300_000
  c.loop.ema_decay = 0.9999
  c.stage1.image_every = 10_000
  c.stage1.checkpoint_every = 10_000
  c.stage1.lr = 2e-4
  c.stage1.warmup_steps = 5000
  c.optim.schedule = "constant"
  c.encoder.latent_dim = 128
  c.encoder.channels = 64
  c.encoder.channel_mults = (1, 2, 2, 2)
  c.encoder.num_res_blocks = 2
  c.stage2.num_steps = 300_000
  c.stage2.lr = 2e-4
  c.stage2.warmup_steps = 5000
  c.prior.num_steps = 100_000  # the latent prior: cheap per step (an MLP on codes)
  c.prior.width = 2048
  c.sampling.num_steps = 1000
  c.mesh.data = -1
  c.mesh.fsdp = 1
  return c
