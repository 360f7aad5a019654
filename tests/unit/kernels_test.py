"""The fused Pallas step (interpret mode on CPU) against its jnp reference.

Every case uses fixed PRNG keys. Shapes are deliberately odd (B not a multiple
of 8, D not a multiple of 128) so the padding and slicing paths run, and some
cases force several batch and D blocks so the grid indexing, the once-per-row
embedding write and the cross-block residual reduction run too.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export

from vdae.diffusion import sde as sde_lib
from vdae.kernels import fused_step
from vdae.kernels import pallas_fused_step as pf
from vdae.kernels import reference as fs

KINDS = ("vp", "subvp", "ve")
SHAPES = ((3, 64), (5, 200), (17, 3 * 37))
TEMB_DIM = 32
TIME_SCALE = 1000.0
# sin/cos of arguments up to time_scale = 1000 carry float32 rounding of the
# argument itself (ulp(1000) ~ 6e-5), so embeddings agree to ~1e-4 absolute.
TEMB_ATOL = 2e-4


def _spec(kind: str, **sde_kw) -> fs.StepSpec:
  return fs.StepSpec(sde=sde_lib.make(kind, **sde_kw), temb_dim=TEMB_DIM, time_scale=TIME_SCALE)


def _inputs(b: int, d: int, seed: int = 0):
  """x, eps, c, noise [b, d] and t [b] in [1e-3, 1], t[0] = 1e-3 (smallest sigma)."""
  ks = jax.random.split(jax.random.PRNGKey(seed), 5)
  x, eps, c, noise = (jax.random.normal(k, (b, d), jnp.float32) for k in ks[:4])
  t = jax.random.uniform(ks[4], (b,), jnp.float32, 1e-3, 1.0).at[0].set(1e-3)
  return x, eps, c, noise, t


def _assert_close(actual, desired, rtol: float = 1e-5):
  """Elementwise close, absolute slack scaled to the array's magnitude."""
  desired = np.asarray(desired)
  np.testing.assert_allclose(
    np.asarray(actual), desired, rtol=rtol, atol=rtol * float(np.abs(desired).max())
  )


def _is_close(actual, desired, rtol: float = 1e-5) -> bool:
  try:
    _assert_close(actual, desired, rtol)
  except AssertionError:
    return False
  return True


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("b,d", SHAPES)
@pytest.mark.parametrize("with_c", [True, False], ids=["c", "no_c"])
@pytest.mark.parametrize("with_noise", [True, False], ids=["sde", "ode"])
def test_reverse_step_matches_reference(kind, b, d, with_c, with_noise):
  spec = _spec(kind)
  x, eps, c, noise, t = _inputs(b, d)
  c = c if with_c else None
  noise = noise if with_noise else None
  dts = {
    "scalar": 0.01,
    "per_example": jax.random.uniform(jax.random.PRNGKey(7), (b,), jnp.float32, 1e-3, 0.05),
  }
  for dt in dts.values():
    x_ref, temb_ref = fs.reference_reverse_step(x, eps, c, noise, t, dt, spec)
    x_k, temb_k = pf.fused_reverse_step(x, eps, c, noise, t, dt, spec, interpret=True)
    assert x_k.shape == (b, d) and x_k.dtype == x.dtype
    assert temb_k.shape == (b, TEMB_DIM)
    _assert_close(x_k, x_ref)
    np.testing.assert_allclose(temb_k, temb_ref, rtol=0, atol=TEMB_ATOL)
    # The update is not the identity and the embedding is not constant, so
    # the comparisons above could fail.
    assert float(jnp.max(jnp.abs(x_ref - x))) > 1e-3
    assert float(jnp.std(temb_ref)) > 0.1


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", KINDS)
def test_reverse_step_multi_block_grid(kind):
  """Several batch and D blocks: each block sees its own rows' t and dt."""
  b, d = 17, 300  # -> padded [24, 384], grid (3, 3) with 8 x 128 blocks
  spec = _spec(kind)
  x, eps, c, noise, t = _inputs(b, d, seed=1)
  dt = jnp.linspace(1e-3, 2e-2, b)
  x_ref, temb_ref = fs.reference_reverse_step(x, eps, c, noise, t, dt, spec)
  x_k, temb_k = pf.fused_reverse_step(
    x, eps, c, noise, t, dt, spec, interpret=True, block_b=8, block_d=128
  )
  _assert_close(x_k, x_ref)
  np.testing.assert_allclose(temb_k, temb_ref, rtol=0, atol=TEMB_ATOL)


def test_bfloat16_operands_keep_dtype():
  """bf16 [B, D] operands are read as bf16, computed in f32, written as x.dtype."""
  spec = _spec("subvp")
  x, eps, c, noise, t = (a.astype(jnp.bfloat16) if a.ndim == 2 else a for a in _inputs(6, 130))
  x_ref, temb_ref = fs.reference_reverse_step(x, eps, c, noise, t, 0.01, spec)
  x_k, temb_k = pf.fused_reverse_step(x, eps, c, noise, t, 0.01, spec, interpret=True)
  assert x_k.dtype == jnp.bfloat16 and temb_k.dtype == jnp.float32
  _assert_close(x_k.astype(jnp.float32), x_ref.astype(jnp.float32), rtol=1e-2)
  np.testing.assert_allclose(temb_k, temb_ref, rtol=0, atol=TEMB_ATOL)
  g = jax.grad(lambda e: jnp.sum(pf.fused_stage2_residual(e, c, noise, t, spec)))(eps)
  assert g.dtype == jnp.bfloat16


def test_wrong_sde_parameters_are_detected():
  """The tolerance is tight enough to see a slightly different sigma/beta schedule."""
  x, eps, c, noise, t = _inputs(5, 200)
  for kind, kw in (("vp", {"beta_max": 20.2}), ("ve", {"sigma_max": 50.5})):
    x_ref, _ = fs.reference_reverse_step(x, eps, c, noise, t, 0.01, _spec(kind))
    x_bad, _ = pf.fused_reverse_step(x, eps, c, noise, t, 0.01, _spec(kind, **kw), interpret=True)
    assert not _is_close(x_bad, x_ref)
  # c enters the update: dropping it changes the result.
  x_ref, _ = fs.reference_reverse_step(x, eps, c, noise, t, 0.01, _spec("vp"))
  x_noc, _ = pf.fused_reverse_step(x, eps, None, noise, t, 0.01, _spec("vp"), interpret=True)
  assert not _is_close(x_noc, x_ref)


def test_expm1_is_accurate_where_exp_minus_one_is_not():
  """Mosaic has no expm1; the in-kernel replacement keeps small-t sigma accurate."""
  x = -jnp.logspace(-8, 1.5, 400, dtype=jnp.float32)
  want = np.expm1(np.asarray(x, np.float64))
  np.testing.assert_allclose(pf._expm1(x), want, rtol=1e-6)
  assert not np.allclose(jnp.exp(x) - 1.0, want, rtol=1e-6, atol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_in_kernel_coefficients_match_sde(kind):
  sde = sde_lib.make(kind)
  t = jnp.linspace(sde.eps, 1.0, 257)
  f, g2, sigma = pf._coefficients(sde, t)
  f_ref, g2_ref = sde.sde_coefficients(t)
  _assert_close(sigma, sde.marginal(t)[1], rtol=2e-6)
  _assert_close(g2, g2_ref, rtol=2e-6)
  if kind == "ve":
    assert f is None and float(jnp.max(jnp.abs(f_ref))) == 0.0
  else:
    _assert_close(f, f_ref, rtol=2e-6)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("b,d,block_d", [(3, 64, None), (17, 3 * 37, None), (5, 300, 128)])
def test_stage2_residual_and_vjp_match_reference(kind, b, d, block_d):
  spec = _spec(kind)
  _, eps, c, noise, t = _inputs(b, d, seed=2)
  c = 3.0 * c  # make sigma(t) c comparable to eps so a wrong sigma would show
  w = jnp.linspace(0.5, 2.0, b)  # distinct per-example cotangents

  def loss_k(eps, c, noise, t):
    r = pf.fused_stage2_residual(eps, c, noise, t, spec, interpret=True, block_d=block_d)
    return jnp.sum(w * r)

  def loss_ref(eps, c, noise, t):
    return jnp.sum(w * fs.reference_stage2_residual(eps, c, noise, t, spec))

  r_k = pf.fused_stage2_residual(eps, c, noise, t, spec, interpret=True, block_d=block_d)
  r_ref = fs.reference_stage2_residual(eps, c, noise, t, spec)
  assert r_k.shape == (b,)
  _assert_close(r_k, r_ref)
  g_k = jax.grad(loss_k, argnums=(0, 1, 2, 3))(eps, c, noise, t)
  g_ref = jax.grad(loss_ref, argnums=(0, 1, 2, 3))(eps, c, noise, t)
  for name, a, want in zip(("eps", "c", "noise", "t"), g_k, g_ref, strict=True):
    assert a.shape == want.shape and a.dtype == want.dtype, name
    _assert_close(a, want, rtol=2e-5)
    assert float(jnp.max(jnp.abs(want))) > 1e-3, name
  # Same result under jit (the custom_vjp's forward variant that saves r).
  g_jit = jax.jit(jax.grad(loss_k, argnums=(0, 1)))(eps, c, noise, t)
  _assert_close(g_jit[0], g_ref[0], rtol=2e-5)
  _assert_close(g_jit[1], g_ref[1], rtol=2e-5)
  # A different sigma schedule would not match.
  bad = pf.fused_stage2_residual(
    eps, c, noise, t, _spec(kind, sigma_min=0.02, beta_min=0.2), interpret=True
  )
  assert not _is_close(bad, r_ref)


def test_stage2_residual_without_c():
  _, eps, _, noise, t = _inputs(5, 200, seed=3)
  spec = _spec("vp")
  zeros = jnp.zeros_like(eps)
  want = fs.reference_stage2_residual(eps, zeros, noise, t, spec)
  _assert_close(pf.fused_stage2_residual(eps, None, noise, t, spec, interpret=True), want)
  g = jax.grad(lambda e: jnp.sum(pf.fused_stage2_residual(e, None, noise, t, spec)))(eps)
  _assert_close(g, eps - noise)


def test_tiling_choices():
  # Benchmark shapes need no padding; odd shapes pad to the tile multiples.
  assert pf._tiling(256, 12288, "tpu") == pf._Tiling(256, 12288, 64, 2048)
  assert pf._tiling(256, 3072, "tpu") == pf._Tiling(256, 3072, 128, 1024)
  assert pf._tiling(256, 3072, "gpu") == pf._Tiling(256, 3072, 8, 1024)
  assert pf._tiling(17, 111, "interpret") == pf._Tiling(24, 128, 8, 128)
  for tiling in (pf._tiling(256, 64, "tpu"), pf._tiling(5, 200, "gpu")):
    assert tiling.bd % 128 == 0 and tiling.bb % 8 == 0
    assert tiling.bd & (tiling.bd - 1) == 0 and tiling.bb & (tiling.bb - 1) == 0
  with pytest.raises(ValueError, match="block_d"):
    pf._tiling(8, 256, "tpu", block_d=192)
  with pytest.raises(ValueError, match="block_b"):
    pf._tiling(8, 256, "tpu", block_b=4)


def test_interpret_default_follows_backend():
  assert pf._resolve_interpret(None) == (jax.default_backend() == "cpu")
  assert pf._resolve_interpret(False) is False


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", KINDS)
def test_kernels_lower_for_tpu_and_triton(kind):
  """Lowering (not running) through Mosaic TPU and Triton catches ops or block
  shapes those backends reject, e.g. expm1 on TPU, without an accelerator."""
  spec = _spec(kind)
  m = jax.ShapeDtypeStruct((256, 3072), jnp.float32)
  v = jax.ShapeDtypeStruct((256,), jnp.float32)
  triton_ok = [export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")]
  for platform, target, checks in (("tpu", "tpu", []), ("cuda", "gpu", triton_ok)):
    tiling = pf._tiling(256, 3072, target)

    def step(x, e, c, n, t, dt, tiling=tiling, target=target):
      return pf._reverse_step_jit(x, e, c, n, t, dt, spec=spec, target=target, tiling=tiling)

    def resid(e, c, n, t, tiling=tiling, target=target):
      return pf._residual_jit(e, c, n, t, spec=spec, target=target, tiling=tiling, save_r=True)

    for fn, args in ((step, (m, m, m, m, v, v)), (resid, (m, m, m, v))):
      exp = export.export(jax.jit(fn), platforms=[platform], disabled_checks=checks)(*args)
      assert "custom_call" in exp.mlir_module()


# --- dispatch ----------------------------------------------------------------


def test_dispatch_auto_uses_reference_on_cpu(monkeypatch):
  if jax.default_backend() != "cpu":
    pytest.skip("impl='auto' picks the kernel on accelerators")

  def boom(*args, **kwargs):
    raise AssertionError("the Pallas kernel must not run for impl='auto' on CPU")

  monkeypatch.setattr(pf, "fused_reverse_step", boom)
  monkeypatch.setattr(pf, "fused_stage2_residual", boom)
  spec = _spec("vp")
  x, eps, c, noise, t = _inputs(3, 64)
  got = fused_step.reverse_step(x, eps, c, noise, t, 0.01, spec, impl="auto")
  want = fs.reference_reverse_step(x, eps, c, noise, t, 0.01, spec)
  np.testing.assert_array_equal(got[0], want[0])
  np.testing.assert_array_equal(got[1], want[1])
  np.testing.assert_array_equal(
    fused_step.stage2_residual(eps, c, noise, t, spec, impl="auto"),
    fs.reference_stage2_residual(eps, c, noise, t, spec),
  )
  with pytest.raises(AssertionError, match="must not run"):
    fused_step.reverse_step(x, eps, c, noise, t, 0.01, spec, impl="pallas")


def test_dispatch_rejects_unknown_impl():
  spec = _spec("vp")
  x, eps, c, noise, t = _inputs(3, 64)
  with pytest.raises(ValueError, match="triton"):
    fused_step.reverse_step(x, eps, c, noise, t, 0.01, spec, impl="triton")
  with pytest.raises(ValueError, match="Pallas"):
    fused_step.stage2_residual(eps, c, noise, t, spec, impl="Pallas")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind,ode", [("vp", False), ("ve", True)])
def test_decode_loop_pallas_equals_reference(kind, ode):
  """10 reverse steps from t = 1 to the SDE's eps through the dispatcher."""
  spec = _spec(kind)
  n_steps, b, d = 10, 4, 64
  sde = spec.sde
  dt = (1.0 - sde.eps) / n_steps
  key = jax.random.PRNGKey(11)
  x0 = sde.prior_sample(key, (b, d))
  noises = [
    None if ode else jax.random.normal(k, (b, d))
    for k in jax.random.split(jax.random.PRNGKey(12), n_steps)
  ]

  def decode(impl: str):
    x, t = x0, jnp.full((b,), 1.0)
    temb = None
    for i in range(n_steps):
      eps = jnp.tanh(x) * t[:, None]
      c = 0.1 * jnp.sin(x) - 0.05 * x
      x, temb = fused_step.reverse_step(x, eps, c, noises[i], t, dt, spec, impl=impl)
      t = t - dt
    return x, temb

  x_p, temb_p = decode("pallas")
  x_r, temb_r = decode("reference")
  assert bool(jnp.all(jnp.isfinite(x_r)))
  _assert_close(x_p, x_r, rtol=1e-4)
  np.testing.assert_allclose(temb_p, temb_r, rtol=0, atol=TEMB_ATOL)
  assert float(jnp.max(jnp.abs(x_r - x0))) > 0.1 * math.sqrt(sde.prior_std)
