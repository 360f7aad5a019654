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
  g_ref, g_vae = jax.grad(lambda p, v: loss_fn(p, batch, jax.random.key(3), v)[0], (0, 1))(
    params, vae_params
  )
  assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(g_vae))
  assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(g_ref)) > 0.0


@pytest.mark.timeout(300)
def test_training_the_refiner_leaves_the_vae_checkpoint_alone_and_decodes(tmp_path, tiny_config):
  cfg = tiny_config
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
