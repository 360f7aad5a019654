"""The VAE + diffusion refiner: its gradient stops at the frozen VAE, and it decodes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.support import procs
from vdae.autoencoders import refined_vae
from vdae.autoencoders import vae as vae_lib
from vdae.autoencoders.registry import load_refined_vae
from vdae.parallel import sharding
from vdae.training import stages

SHAPE = (8, 8, 1)


@pytest.mark.timeout(120)
def test_the_refiners_gradient_never_reaches_the_vae(tiny_config):
  """x_bar enters the loss, so only the stop-gradient keeps the VAE's gradient at 0;
  the refiner's own gradient is not 0."""
  cfg = tiny_config
  vae = vae_lib.model_from_config(cfg, SHAPE)
  vae_params = vae.init(jax.random.key(0), SHAPE)
  params = refined_vae.init_params(cfg, SHAPE)(jax.random.key(1))
  loss_fn = refined_vae.make_loss(cfg, vae, SHAPE)
  batch = {"image": jax.random.uniform(jax.random.key(2), (4, *SHAPE), minval=-1, maxval=1)}
  grad = jax.jit(jax.grad(lambda p, v: loss_fn(p, batch, jax.random.key(3), v)[0], (0, 1)))
  g_ref, g_vae = grad(params, vae_params)  # jitted: one compile, not one per op
  assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(g_vae))
  assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(g_ref)) > 0.0


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_training_the_refiner_leaves_the_vae_checkpoint_alone_and_decodes(tmp_path, mini_config):
  cfg = mini_config
  wd = str(tmp_path)
  mesh = sharding.make_mesh(cfg.mesh)
  stages.train("vae", cfg, wd, mesh)
  before, _ = stages.load_stage("vae", cfg, wd, mesh, SHAPE)
  before = jax.tree.map(np.asarray, before)
  stages.train("refiner", cfg, wd, mesh)
  after, _ = stages.load_stage("vae", cfg, wd, mesh, SHAPE)
  procs.assert_trees_close(before, jax.tree.map(np.asarray, after), rtol=0, atol=0)
  assert procs.steps(f"{wd}/refiner/checkpoints")[-1] == cfg.refiner.num_steps

  ae = load_refined_vae(cfg, wd, mesh, SHAPE)
  x = np.asarray(jax.random.uniform(jax.random.key(0), (4, *SHAPE), minval=-1, maxval=1))
  z = ae.encode(x)
  np.testing.assert_array_equal(z, ae.vae.encode(x))  # the VAE's code and rate
  a, b = ae.decode(z, jax.random.key(1), "mode"), ae.decode(z, jax.random.key(2), "mode")
  s1, s2 = ae.decode(z, jax.random.key(1)), ae.decode(z, jax.random.key(2))
  assert a.shape == s1.shape == (4, *SHAPE) and np.all(np.isfinite(s1))
  np.testing.assert_array_equal(a, b)  # mode is deterministic
  assert not np.allclose(s1, s2)  # sample is not

  # A VAE trained further since is not the one the refiner learned to refine.
  cfg.vae.num_steps += 2
  stages.train("vae", cfg, wd, mesh)
  with pytest.raises(Exception, match="refiner was trained on the VAE's outputs at step 4"):
    load_refined_vae(cfg, wd, mesh, SHAPE)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("x_bar_gradient", ["stop", "through"])
def test_joint_training_lets_the_dsm_gradient_into_the_vae_only_through_x_bar(
  tiny_config, x_bar_gradient
):
  """Joint: the VAE's gradient is its -ELBO's alone under `stop`, and differs from it
  (the DSM term reaches the VAE through x_bar) under `through`."""
  cfg = tiny_config
  cfg.refiner.joint, cfg.refiner.x_bar_gradient = True, x_bar_gradient
  vae = vae_lib.model_from_config(cfg, SHAPE)
  params = refined_vae.init_params(cfg, SHAPE)(jax.random.key(1))
  assert set(params) == {"vae", "refiner"}
  # Away from the init, whose zero output layer makes the DSM loss blind to its input.
  leaves, tree = jax.tree.flatten(params["refiner"])
  keys = jax.random.split(jax.random.key(4), len(leaves))
  noisy = [a + 0.1 * jax.random.normal(k, a.shape) for a, k in zip(leaves, keys, strict=True)]
  params["refiner"] = jax.tree.unflatten(tree, noisy)
  loss_fn = refined_vae.make_loss(cfg, vae, SHAPE)
  batch = {"image": jax.random.uniform(jax.random.key(2), (4, *SHAPE), minval=-1, maxval=1)}
  key = jax.random.key(3)
  g = jax.grad(lambda p: loss_fn(p, batch, key, None)[0])(params)
  k_elbo = jax.random.split(key, 3)[0]  # the key the joint loss gives the -ELBO
  g_elbo = jax.grad(
    lambda v: jnp.mean(vae.neg_elbo(v, batch["image"], k_elbo, cfg.vae.beta_kl)[0])
  )(params["vae"])
  diff = max(
    float(jnp.abs(a - b).max())
    for a, b in zip(jax.tree.leaves(g["vae"]), jax.tree.leaves(g_elbo), strict=True)
  )
  if x_bar_gradient == "stop":
    assert diff < 1e-5
  else:
    assert diff > 1e-3
  assert max(float(jnp.abs(a).max()) for a in jax.tree.leaves(g["refiner"])) > 0.0


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_jointly_trained_refiner_needs_no_vae_stage_and_decodes_with_its_own_vae(
  tmp_path, mini_config
):
  cfg = mini_config
  cfg.refiner.joint = True
  wd = str(tmp_path)
  mesh = sharding.make_mesh(cfg.mesh)
  stages.train("refiner", cfg, wd, mesh)
  assert not stages.is_trained("vae", cfg, wd)
  params, _ = stages.load_stage("refiner", cfg, wd, mesh, SHAPE)
  ae = load_refined_vae(cfg, wd, mesh, SHAPE)
  x = np.asarray(jax.random.uniform(jax.random.key(0), (4, *SHAPE), minval=-1, maxval=1))
  z = ae.encode(x)
  mu, _ = vae_lib.model_from_config(cfg, SHAPE).encode(params["vae"], jnp.asarray(x))
  np.testing.assert_allclose(z, np.asarray(mu), rtol=1e-5, atol=1e-6)  # its own VAE's code
  out = ae.decode(z, jax.random.key(1))
  assert out.shape == (4, *SHAPE) and np.all(np.isfinite(out))
  # Loading it as a two-stage refiner is a config mismatch, named.
  cfg.refiner.joint = False
  with pytest.raises(Exception, match="refiner.joint"):
    load_refined_vae(cfg, wd, mesh, SHAPE)
