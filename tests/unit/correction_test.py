"""Latent-correction score and the stage-2 loss against closed forms."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from vdae.diffusion import sde as sde_lib
from vdae.kernels import fused_step
from vdae.latent import correction as latent
from vdae.latent import objective
from vdae.models import encoder as encoder_lib
from vdae.models.network import Network

L, D, S2_NOISE = 2, 6, 0.05


def _linear_gaussian():
  """x0 = A z + s e with orthogonal columns of A, so p(z | x_t) is diagonal."""
  q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(D, L)))
  return jnp.asarray(q * np.array([2.0, 0.7]))  # column norms 2 and 0.7


def _exact_posterior_encoder(A, sde):
  """The Gaussian family's member equal to p(z | x_t, t): mu = W(t) x, var(t)."""
  ata = jnp.diag(A.T @ A)

  def encode(x, t):
    alpha, sigma = sde.marginal(t)
    v = alpha**2 * S2_NOISE + sigma**2  # [B]
    post_var = 1.0 / (1.0 + alpha[:, None] ** 2 * ata[None] / v[:, None])  # [B, L]
    mu = post_var * alpha[:, None] * (x.reshape(x.shape[0], -1) @ A) / v[:, None]
    return mu, jnp.log(post_var)

  return encode


@pytest.mark.parametrize("kind", ["vp", "ve"])
def test_correction_score_is_the_exact_posterior_score(kind):
  """c = grad_x log p(z | x_t) = grad_x log p(x_t | z) - grad_x log p(x_t) (Bayes)."""
  sde = sde_lib.make(kind)
  A = _linear_gaussian()
  enc = _exact_posterior_encoder(A, sde)
  key = jax.random.key(0)
  b = 5
  z = jax.random.normal(key, (b, L))
  xt = jax.random.normal(jax.random.key(1), (b, D)) * 1.5
  t = jnp.array([0.05, 0.2, 0.4, 0.7, 0.95])
  c = latent.correction_score(enc, xt, t, z)
  alpha, sigma = sde.marginal(t)
  v = alpha**2 * S2_NOISE + sigma**2
  for i in range(b):
    lik = -(xt[i] - alpha[i] * A @ z[i]) / v[i]
    cov = alpha[i] ** 2 * A @ A.T + v[i] * jnp.eye(D)
    marg = -jnp.linalg.solve(cov, xt[i])
    np.testing.assert_allclose(c[i], lik - marg, rtol=2e-4, atol=2e-4)


def test_log_q_matches_scipy_and_drops_only_the_logvar_term():
  mu = jnp.array([[0.3, -1.0, 2.0]])
  log_var = jnp.array([[0.1, -0.5, 1.2]])
  z = jnp.array([[0.0, 0.5, 1.0]])
  ref = stats.multivariate_normal(np.asarray(mu[0]), np.diag(np.exp(np.asarray(log_var[0]))))
  assert float(latent.log_q(z, mu, log_var)[0]) == pytest.approx(ref.logpdf(z[0]), rel=1e-5)
  no_lv = float(latent.log_q(z, mu, log_var, logvar_term=False)[0])
  extra = -0.5 * float(jnp.sum(log_var)) - 0.5 * 3 * math.log(2 * math.pi)
  assert no_lv + extra == pytest.approx(ref.logpdf(z[0]), rel=1e-5)


def _conv_encoder(latent_dim=3):
  enc = Network(
    encoder_lib.Encoder,
    latent_dim=latent_dim,
    channels=8,
    channel_mults=(1, 2),
    num_res_blocks=1,
    groups=4,
    temb_dim=16,
  )
  x = jax.random.normal(jax.random.key(0), (4, 8, 8, 1))
  params = enc.init(jax.random.key(1), x.shape[1:])
  # Random (non-zero) params everywhere so the test sees a real dependence on x.
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(2), len(leaves))
  params = jax.tree.unflatten(
    tree, [0.3 * jax.random.normal(k, p.shape) for k, p in zip(keys, leaves)]
  )
  return enc, params, x


@pytest.mark.parametrize("logvar_term", [True, False])
def test_reverse_mode_equals_jacfwd(logvar_term):
  enc, params, x = _conv_encoder()
  encode_fn = lambda xx, t: enc.apply(params, xx, t)
  t = jnp.array([0.1, 0.3, 0.6, 0.9])
  z = jax.random.normal(jax.random.key(3), (4, 3))
  # Jitted: one compile each, not one per op of the encoder's forward and backward passes.
  rev = jax.jit(latent.correction_score, static_argnums=(0, 4))
  c_rev = rev(encode_fn, x, t, z, logvar_term)
  c_fwd = jax.jit(latent.correction_score_jacfwd, static_argnums=(0, 4))(
    encode_fn, x, t, z, logvar_term
  )
  assert float(jnp.abs(c_rev).max()) > 1e-3
  np.testing.assert_allclose(c_rev, c_fwd, rtol=1e-4, atol=1e-5)
  other = rev(encode_fn, x, t, z, not logvar_term)
  assert not np.allclose(c_rev, other, atol=1e-5)  # the log v term matters when v depends on x


def _stage2_setup(form="eps"):
  from vdae.models import unet

  sde = sde_lib.make("vp")
  spec = fused_step.StepSpec(sde, 16, 1000.0)
  score = Network(
    unet.UNet, channels=8, channel_mults=(1, 2), num_res_blocks=1, groups=4, temb_dim=16
  )
  enc, enc_params, x = _conv_encoder()
  sp = score.init(jax.random.key(5), x.shape[1:])
  leaves, tree = jax.tree.flatten(sp)
  keys = jax.random.split(jax.random.key(6), len(leaves))
  sp = jax.tree.unflatten(tree, [0.2 * jax.random.normal(k, p.shape) for k, p in zip(keys, leaves)])

  def loss(enc_params, score_params, form=form):
    return objective.vdae_loss(
      lambda xx, t: score.apply(score_params, xx, t),
      lambda xx, t: enc.apply(enc_params, xx, t),
      x,
      jax.random.key(7),
      sde,
      spec,
      beta_kl=0.1,
      form=form,
      kernel="reference",
    )[0]

  return loss, enc_params, sp


def test_stage2_gradient_reaches_only_the_encoder():
  loss, enc_params, score_params = _stage2_setup()
  g_enc, g_score = jax.jit(jax.grad(loss, argnums=(0, 1)))(enc_params, score_params)
  assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(g_score))
  assert sum(float(jnp.abs(g).sum()) for g in jax.tree.leaves(g_enc)) > 0.0


def test_score_form_equals_eps_form():
  loss, enc_params, score_params = _stage2_setup()
  a = loss(enc_params, score_params, "eps")
  b = loss(enc_params, score_params, "score")
  assert float(a) == pytest.approx(float(b), rel=1e-4)
  ga = jax.grad(loss)(enc_params, score_params, "eps")
  gb = jax.grad(loss)(enc_params, score_params, "score")
  for x, y in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
    np.testing.assert_allclose(x, y, rtol=2e-3, atol=1e-5)


def test_kl_standard_normal_closed_form():
  mu = jnp.array([[1.0, 0.0]])
  lv = jnp.array([[0.0, math.log(4.0)]])
  # 0.5 * (1 + 0) + 0.5 * (4 - 1 - log 4)
  assert float(latent.kl_standard_normal(mu, lv)[0]) == pytest.approx(0.5 + 0.5 * (3 - math.log(4)))
