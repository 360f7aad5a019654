"""The diffusers schedule bridge and the imported score model's eps <-> score conversion.

For Gaussian data x_0 ~ N(m, s^2 I) the noise prediction is known in closed form
at every t: eps*(x_t, t) = sigma (x_t - alpha m) / (alpha^2 s^2 + sigma^2). A
stand-in network that computes it from the *network's* timestep (so it reads
t = timestep / (N - 1), as a DDPM does) checks the timestep mapping and the
conversion of both prediction types to vdae's score.
"""

from __future__ import annotations

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vdae.diffusion import score
from vdae.diffusion import sde as sde_lib
from vdae.io import pretrained
from vdae.io.errors import CheckpointError, ConfigError

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fixtures", "diffusers")
M, S = 0.3, 0.5  # the Gaussian data's mean and std


def test_linear_betas_become_the_vp_sde_and_its_alpha_bar_is_close():
  sched = pretrained.schedule_from_json(
    {"_class_name": "DDPMScheduler", "beta_schedule": "linear", "num_train_timesteps": 1000}, "s"
  )
  assert (sched.kind, sched.beta_min, sched.beta_max, sched.time_scale) == ("vp", 0.1, 20.0, 999)
  sde = sde_lib.make("vp", sched.beta_min, sched.beta_max)
  abar = np.load(os.path.join(FIXTURES, "schedules.npz"))["linear_1000"]  # diffusers' own
  np.testing.assert_allclose(pretrained.discrete_alphas_cumprod({}), abar, rtol=2e-4)  # f32 there
  t = np.arange(1000) / 999
  rel = np.abs(np.asarray(sde.marginal(jnp.asarray(t))[0], np.float64) ** 2 - abar) / abar
  # The continuous SDE integrates beta(t); the discrete product is a Riemann sum of
  # it: ~1% off over the first half, ~7% in the last steps where alpha_bar is ~4e-5.
  assert rel[:500].max() < 0.02 and rel.max() < 0.08, (rel[:500].max(), rel.max())
  assert pretrained.alpha_bar_error({}, sde) == pytest.approx(rel.max(), rel=1e-3)


def test_cosine_betas_become_vp_cosine_equal_at_every_training_timestep():
  cfg = {"beta_schedule": "squaredcos_cap_v2", "num_train_timesteps": 1000}
  sched = pretrained.schedule_from_json(cfg, "s")
  sde = sde_lib.make(sched.kind, timesteps=1000)
  abar = np.load(os.path.join(FIXTURES, "schedules.npz"))["cosine_1000"]
  np.testing.assert_allclose(pretrained.discrete_alphas_cumprod(cfg), abar, rtol=2e-4)
  t = jnp.asarray(np.arange(1000) / 999)
  got = np.asarray(sde.marginal(t)[0], np.float64) ** 2
  np.testing.assert_allclose(got[:-1], abar[:-1], rtol=2e-3)  # float32 cos near pi/2
  np.testing.assert_allclose(got[-1], abar[-1], rtol=0.05)


@pytest.mark.parametrize("kind", ["vp", "vp_cosine"])
def test_vp_sdes_drift_and_diffusion_are_consistent_with_their_marginals(kind):
  # d sigma^2 / dt = 2 f sigma^2 + g^2 and d log alpha / dt = f, by finite differences.
  sde = sde_lib.make(kind)
  t = jnp.linspace(0.05, 0.95, 10)
  h = 1e-3
  a = lambda t: sde.marginal(t)[0]
  f, g2 = sde.sde_coefficients(t)
  dla = (jnp.log(a(t + h)) - jnp.log(a(t - h))) / (2 * h)
  np.testing.assert_allclose(dla, f, rtol=2e-3)
  var = lambda t: sde.marginal(t)[1] ** 2
  dvar = (var(t + h) - var(t - h)) / (2 * h)  # f32 differences of a variance near 1
  np.testing.assert_allclose(dvar, 2 * f * var(t) + g2, rtol=5e-3, atol=1e-3)
  level = sde.marginal(t)[1] / sde.marginal(t)[0]
  np.testing.assert_allclose(sde.time_of_noise_level(level), t, atol=1e-4)


class _ExactGaussian(nnx.Module):
  """Predicts eps (or v) of Gaussian data exactly, reading t from the network timestep."""

  def __init__(self, sde: sde_lib.SDE, n: int, kind: str):
    self.sde, self.n, self.kind = sde, n, kind

  def __call__(self, x, timesteps, train=False, rngs=None):
    t = timesteps / (self.n - 1)
    a, s = (sde_lib.bcast(v, x) for v in self.sde.marginal(t))
    eps = s * (x - a * M) / (a**2 * S**2 + s**2)
    if self.kind == "epsilon":
      return eps
    x0 = (x - s * eps) / a
    return a * eps - s * x0 if self.kind == "v_prediction" else x0


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction", "sample"])
def test_imported_predictions_become_the_true_score(kind):
  sde = sde_lib.make("vp", 0.1, 20.0)
  net = score.ImportedScoreNet(_ExactGaussian(sde, 1000, kind), kind, sde, 999.0)
  x = jnp.asarray(np.random.default_rng(0).standard_normal((6, 4, 4, 1)), jnp.float32)
  t = jnp.asarray([0.01, 0.1, 0.3, 0.5, 0.8, 1.0])
  eps = net(x, t)
  a, s = (sde_lib.bcast(v, x) for v in sde.marginal(t))
  true_score = -(x - a * M) / (a**2 * S**2 + s**2)  # grad log N(x; a m, a^2 s^2 + s^2)
  got = score.eps_to_score(eps, sde.marginal(t)[1])
  np.testing.assert_allclose(got, true_score, rtol=2e-4, atol=2e-4)


def test_imported_timestep_mapping_is_t_times_n_minus_1():
  # With the mapping t * N instead, the same network is wrong: the test above can fail.
  sde = sde_lib.make("vp", 0.1, 20.0)
  net = score.ImportedScoreNet(_ExactGaussian(sde, 1000, "epsilon"), "epsilon", sde, 1000.0)
  x = jnp.ones((1, 2, 2, 1))
  t = jnp.asarray([0.5])
  right = score.ImportedScoreNet(_ExactGaussian(sde, 1000, "epsilon"), "epsilon", sde, 999.0)
  assert not np.allclose(net(x, t), right(x, t), rtol=1e-4)


@pytest.mark.parametrize(
  "changes, named",
  [
    ({"beta_schedule": "scaled_linear"}, "beta_schedule='scaled_linear'"),
    ({"trained_betas": [0.1, 0.2]}, "trained_betas"),
    ({"rescale_betas_zero_snr": True}, "rescale_betas_zero_snr"),
    ({"prediction_type": "flow"}, "prediction_type='flow'"),
    ({"_class_name": "EulerDiscreteScheduler"}, "_class_name"),
    ({"some_new_field": 1}, "some_new_field"),
  ],
)
def test_schedules_the_bridge_cannot_represent_are_refused(changes, named):
  with pytest.raises(CheckpointError) as e:
    pretrained.schedule_from_json({"_class_name": "DDPMScheduler", **changes}, "sched.json")
  assert named in str(e.value) and "\n" not in str(e.value)


def test_the_fixture_schedulers_are_accepted():
  for rel in (
    "digits_ddpm/scheduler/scheduler_config.json",
    "ddpm_cifar10_32/scheduler_config.json",
  ):
    with open(os.path.join(FIXTURES, rel)) as f:
      sched = pretrained.schedule_from_json(json.load(f), rel)
    assert sched.kind == "vp" and sched.prediction_type == "epsilon"


def test_layouts_and_missing_weights(tmp_path):
  hub = os.path.join(FIXTURES, "digits_ddpm")
  layout = pretrained.find_layout(hub)
  assert layout.config.endswith(os.path.join("unet", "config.json")) and layout.scheduler
  flat = pretrained.find_layout(os.path.join(FIXTURES, "unet_a"))
  assert flat.scheduler is None
  (tmp_path / "config.json").write_text("{}")
  (tmp_path / "diffusion_pytorch_model.bin").write_bytes(b"")
  with pytest.raises(CheckpointError, match="reads safetensors only"):
    pretrained.find_layout(str(tmp_path))
  with pytest.raises(CheckpointError, match="no such directory"):
    pretrained.find_layout(str(tmp_path / "nope"))
  with pytest.raises(ConfigError, match=r"model.path='gs://b/ddpm' is a remote path"):
    pretrained.find_layout("gs://b/ddpm")
