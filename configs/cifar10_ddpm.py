"""CIFAR-10 with the pretrained google/ddpm-cifar10-32 (Ho et al. 2020) as the score model.

vdae trains only what the paper trains: the encoder on the frozen, pretrained
DDPM (35.7M parameters), then its latent prior, the VAE baseline, its refiner and
the evaluation (300 000 encoder steps: a GPU or TPU job). Download the checkpoint
once (nothing downloads at run time; the hub's copy has safetensors weights):

  pip install huggingface_hub && hf download google/ddpm-cifar10-32 \
      --local-dir checkpoints/ddpm-cifar10-32

then, with CIFAR-10 in any of vdae's sources (here ArrayRecord, as configs/cifar10.py):

  python -m vdae.main --config=configs/cifar10_ddpm.py --workdir=runs/cifar10_ddpm \
      --config.model.path=checkpoints/ddpm-cifar10-32 \
      --config.data.path='/data/cifar10/cifar10-train.array_record*'

The checkpoint's scheduler (linear betas 1e-4..0.02 over 1000 steps, epsilon
prediction) sets the sde group; see docs/pretrained.md.
"""

from configs import cifar10


def get_config():
  c = cifar10.get_config()
  c.model.source = "diffusers"
  c.model.path = "checkpoints/ddpm-cifar10-32"
  c.model.dtype = "bfloat16"  # compute dtype; the imported weights stay float32
  return c
