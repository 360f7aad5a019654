"""PF-ODE likelihood: divergence estimators, and bits/dim of the exact Gaussian score
against the closed-form log-density."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.support import gaussian
from vdae.diffusion import likelihood
from vdae.diffusion import sde as sde_lib

B, D = 64, 3
S2 = jnp.array([0.25, 0.04, 0.5])


def _per_example_fn():
  """A nonlinear map acting on each row alone, with a dense (non-diagonal) Jacobian."""
  w = jax.random.normal(jax.random.key(1), (D, D))
  return lambda x: jnp.tanh(x @ w) + 0.5 * x**2


@pytest.mark.timeout(60)
def test_exact_divergence_is_the_jacobian_trace():
  f = _per_example_fn()
  x = jax.random.normal(jax.random.key(0), (5, D))
  ref = jax.vmap(lambda xi: jnp.trace(jax.jacfwd(lambda v: f(v[None])[0])(xi)))(x)
  # chunk=2 does not divide D = 3: the padded directions must count for nothing.
  for chunk in (1, 2, 64):
    np.testing.assert_allclose(likelihood.exact_divergence(f, x, chunk), ref, rtol=1e-5)


@pytest.mark.timeout(60)
def test_hutchinson_divergence_is_unbiased():
  f = _per_example_fn()
  x = jax.random.normal(jax.random.key(0), (5, D))
  probes = jax.random.rademacher(jax.random.key(2), (20000, 5, D), dtype=jnp.float32)
  est = likelihood.hutchinson_divergence(f, x, probes)
  np.testing.assert_allclose(est, likelihood.exact_divergence(f, x), atol=0.05)


def _gaussian_logp(kind, m, exact_max_dim=1024, solver="tsit5"):
  sde = sde_lib.make(kind)
  x = m + jnp.sqrt(S2) * jax.random.normal(jax.random.key(1), (B, D))
  fn = jax.jit(
    lambda x, k: likelihood.log_likelihood(
      gaussian.exact_score(sde, m, S2),
      x,
      sde,
      k,
      exact_max_dim=exact_max_dim,
      rtol=1e-5,
      atol=1e-5,
      solver=solver,
    )
  )
  logp, stats = fn(x, jax.random.key(0))
  ref = gaussian.logp_t(sde, m, S2, x, jnp.full((B,), sde.eps))
  assert float(stats["ok"]) == 1.0
  return np.asarray(logp), np.asarray(ref)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind,solver", [("vp", "tsit5"), ("subvp", "dopri5"), ("ve", "tsit5")])
def test_bits_per_dim_of_exact_gaussian_score_matches_closed_form(kind, solver):
  """Zero-mean data: the prior N(0, I) is then the true marginal at t = 1 up to
  ~1e-5, so the only error left is the solver's."""
  logp, ref = _gaussian_logp(kind, jnp.zeros(D), solver=solver)
  np.testing.assert_allclose(logp, ref, atol=2e-3)
  bpd = likelihood.bits_per_dim(jnp.asarray(logp), D, None)
  bpd_ref = -ref / (D * math.log(2.0))
  np.testing.assert_allclose(bpd, bpd_ref, atol=1e-3)
  assert abs(float(bpd.mean()) - float(bpd_ref.mean())) < 2e-4


@pytest.mark.timeout(120)
def test_gaussian_likelihood_with_mean_and_hutchinson():
  """Non-zero mean: p_1 differs from N(0, I) by alpha(1) m ~ 0.007 m, which bounds
  the error; Hutchinson (D > exact_max_dim) agrees on average."""
  m = jnp.array([1.0, -0.5, 0.3])
  logp, ref = _gaussian_logp("vp", m)
  assert np.max(np.abs(logp - ref)) < 0.05
  assert abs(float(np.mean(logp - ref))) < 0.01
  logp_h, _ = _gaussian_logp("vp", m, exact_max_dim=0)
  assert abs(float(np.mean(logp_h - ref))) < 0.02


def test_dequantisation_and_bits_offset():
  levels = 17
  k = np.arange(levels)
  x = jnp.asarray(2.0 * k / (levels - 1) - 1.0)[None].repeat(1000, 0)
  xd = np.asarray(likelihood.dequantize(x, levels, jax.random.key(0)))
  half_bin = 1.0 / (levels - 1)
  assert np.all(np.abs(xd - np.asarray(x)) <= half_bin + 1e-6)
  # Uniform density over [-1 - h, 1 + h] (volume 2 + 2h per dim) is the uniform
  # pmf over the 17 levels: exactly log2(17) bits per dim.
  logp = -levels * jnp.log(jnp.asarray([2.0 + 2.0 * half_bin]))
  np.testing.assert_allclose(
    likelihood.bits_per_dim(logp, levels, levels), math.log2(levels), rtol=1e-6
  )
  assert math.isclose(
    float(likelihood.bits_per_dim(jnp.zeros(1), 1, 256)[0]), math.log2(127.5), rel_tol=1e-6
  )


@pytest.mark.timeout(60)
def test_wrong_score_gives_a_different_likelihood():
  """Guards the closed-form test: the score of another Gaussian must not match."""
  sde = sde_lib.make("vp")
  x = jnp.sqrt(S2) * jax.random.normal(jax.random.key(1), (B, D))
  logp, _ = likelihood.log_likelihood(
    gaussian.exact_score(sde, jnp.zeros(D), 2.0 * S2),
    x,
    sde,
    jax.random.key(0),
    rtol=1e-5,
    atol=1e-5,
  )
  ref = gaussian.logp_t(sde, jnp.zeros(D), S2, x, jnp.full((B,), sde.eps))
  assert abs(float(jnp.mean(logp - ref))) > 0.1


def _pieces(score_fn, sde, **kw):
  return likelihood.Pieces(lambda args: score_fn, sde, rtol=1e-5, atol=1e-5, **kw)


@pytest.mark.timeout(120)
def test_a_solve_in_pieces_agrees_with_one_solve_and_the_closed_form():
  """Pieces of any size carry the solver's and the controller's state on: the steps and
  the log-density of one solve; every piece hands control back (t rising to 1), and a
  callback that raises (a SIGTERM's exit) stops the solve between pieces."""
  sde = sde_lib.make("vp")
  m = jnp.array([1.0, -0.5, 0.3])
  x = m + jnp.sqrt(S2) * jax.random.normal(jax.random.key(1), (B, D))
  score_fn = gaussian.exact_score(sde, m, S2)
  one, one_stats = likelihood.log_likelihood(
    score_fn, x, sde, jax.random.key(0), rtol=1e-5, atol=1e-5
  )
  ref = gaussian.logp_t(sde, m, S2, x, jnp.full((B,), sde.eps))
  for piece in (1, 4096):
    seen = []
    logp, stats = _pieces(score_fn, sde, piece_steps=piece)(None, x, jax.random.key(0), seen.append)
    assert float(stats["ok"]) == 1.0
    assert int(stats["num_steps"]) == int(one_stats["num_steps"])
    np.testing.assert_allclose(logp, one, atol=1e-5)
    assert np.max(np.abs(np.asarray(logp) - np.asarray(ref))) < 0.05
    ts = [p["t"] for p in seen]
    assert ts == sorted(ts) and ts[-1] == pytest.approx(1.0) and seen[-1]["status"] == 1
    assert all(p["steps"] <= (i + 1) * piece for i, p in enumerate(seen))
    assert (len(seen) > 1) == (piece < int(stats["num_steps"]))

  class Stop(Exception):
    pass

  def stop_after_two(p):
    if p["steps"] >= 6:
      raise Stop

  with pytest.raises(Stop):
    _pieces(score_fn, sde, piece_steps=3)(None, x, jax.random.key(0), stop_after_two)


@pytest.mark.timeout(120)
def test_a_solve_past_its_budget_is_nan_and_reported_unconverged():
  sde = sde_lib.make("vp")
  x = jnp.sqrt(S2) * jax.random.normal(jax.random.key(1), (B, D))
  score_fn = gaussian.exact_score(sde, jnp.zeros(D), S2)
  seen = []
  logp, stats = _pieces(score_fn, sde, piece_steps=2, max_steps=4)(
    None, x, jax.random.key(0), seen.append
  )
  assert np.all(np.isnan(logp)) and float(stats["ok"]) == 0.0
  assert int(stats["num_steps"]) == 4 and seen[-1]["t"] < 1.0  # stopped, not ground on
  out = {"bpd": np.asarray(logp), "ok": np.zeros(B, bool), "steps": np.array([4])}
  got = likelihood.summary("k", out, "k_steps")
  assert np.isnan(got["k"]) and got["k_converged"] == 0.0 and got["k_steps"] == 4.0
  # One converged batch of two: still NaN (a mean over the easy half would flatter),
  # with the share beside it.
  out = {
    "bpd": np.array([1.0, 2.0, np.nan, np.nan]),
    "ok": np.array([1, 1, 0, 0], bool),
    "steps": np.array([10, 40]),
  }
  got = likelihood.summary("k", out, "k_steps")
  assert np.isnan(got["k"]) and got["k_converged"] == 0.5 and got["k_steps"] == 25.0


@pytest.mark.timeout(120)
def test_solve_batches_solves_only_the_batches_not_kept():
  sde = sde_lib.make("vp")
  x = np.asarray(jnp.sqrt(S2) * jax.random.normal(jax.random.key(1), (10, D)))
  score_fn = gaussian.exact_score(sde, jnp.zeros(D), S2)
  pieces = _pieces(score_fn, sde)
  solved = []

  def solve(xb, i, between):
    solved.append(i)
    logp, stats = pieces(None, jnp.asarray(xb), jax.random.key(i), between)
    return likelihood.bits_per_dim(logp, D, None), stats

  class Keep(likelihood.BatchHooks):
    def __init__(self, kept):
      self.kept, self.saved = dict(kept), {}

    def load(self, i):
      return self.kept.get(i)

    def save(self, i, result):
      self.saved[i] = result

  first = Keep({})
  whole = likelihood.solve_batches(solve, x, 4, True, first)
  assert solved == [0, 1, 2] and sorted(first.saved) == [0, 1, 2]
  assert whole["bpd"].shape == (10,) and whole["ok"].all()
  solved.clear()
  again = likelihood.solve_batches(solve, x, 4, True, Keep({0: first.saved[0], 2: first.saved[2]}))
  assert solved == [1]
  np.testing.assert_array_equal(again["bpd"], whole["bpd"])
  np.testing.assert_array_equal(again["steps"], whole["steps"])
