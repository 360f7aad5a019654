"""SDEdit on a VAE's output: the baseline that refines x_bar without training.

Meng et al.'s SDEdit: perturb the VAE's reconstruction x_bar with the stage-1 score
model's own SDE to a time t0 (`sdedit.t0`) and run the reverse process with the
unconditional score from there. Small t0 keeps x_bar's content and sharpens little;
large t0 sharpens more and may change the digit. The encoder, code and rate are
the VAE's; the score model is vdae's stage 1 (or an imported one).
"""

from __future__ import annotations

import jax
import numpy as np

from vdae.autoencoders.base import Autoencoder, check_protocol, with_method
from vdae.autoencoders.vae import VAE
from vdae.diffusion import samplers, score
from vdae.diffusion import sde as sde_lib
from vdae.kernels.reference import StepSpec
from vdae.parallel import sharding
from vdae.types import Params


class SDEditVAE(Autoencoder):
  """decode "sample": x_t0 = alpha(t0) x_bar + sigma(t0) n, then the reverse process
  (`sampling.method`, sdedit.num_steps steps from t0); "mode": from x_t0 = alpha(t0)
  x_bar, the noise's mean, by the PF ODE (`eval.mode_method`, eval.mode_num_steps)."""

  name = "sdedit_vae"

  def __init__(self, config, vae: VAE, score_params: Params, mesh, image_shape):
    self.config, self.vae, self.score_params, self.mesh = config, vae, score_params, mesh
    self.image_shape = tuple(image_shape)
    self.latent_dim = vae.latent_dim
    self.model = score.model_from_config(config.model, config.sde)
    self.sde = sde_lib.from_config(config.sde)
    self._samplers: dict = {}

  def posterior(self, x):
    return self.vae.posterior(x)

  def _sampler(self, n: int, method: str, steps: int) -> samplers.CompiledSampler:
    key = (n, method, steps)
    if key not in self._samplers:
      cfg = self.config
      self._samplers[key] = samplers.compile_sampler(
        lambda params: (score.eps_fn_for(self.model, params, cfg.model), None),
        with_method(cfg.sampling, method, steps),
        self.sde,
        StepSpec.from_config(cfg.model, cfg.sde),
        (n, *self.image_shape),
        out_sharding=sharding.replicated(self.mesh),
        mesh=self.mesh,  # each device refines its own rows
        t_start=float(cfg.sdedit.t0),
      )
    return self._samplers[key]

  def edit(self, x_bar: np.ndarray, key, protocol: str = "sample") -> np.ndarray:
    """x_bar [B, H, W, C] -> perturbed to t0 and denoised by the score model."""
    sd, ev = self.config.sdedit, self.config.eval
    t0 = np.full((len(x_bar),), sd.t0, np.float32)
    alpha, sigma = (np.asarray(a) for a in self.sde.marginal(t0))
    k_noise, k_run = jax.random.split(key)
    x_t0 = alpha[:, None, None, None] * x_bar
    if protocol == "mode":
      fn = self._sampler(len(x_bar), ev.mode_method, ev.mode_num_steps)
    else:
      fn = self._sampler(len(x_bar), self.config.sampling.method, sd.num_steps)
      x_t0 = x_t0 + sigma[:, None, None, None] * np.asarray(jax.random.normal(k_noise, x_bar.shape))
    x_t0 = sharding.batch_from_host(np.asarray(x_t0, np.float32), self.mesh)
    return sharding.to_host(fn(self.score_params, k_run, x_t0))

  def decode(self, z, key, protocol="sample"):
    check_protocol(protocol)
    return self.edit(self.vae.decode(z, None, "mode"), key, protocol)
