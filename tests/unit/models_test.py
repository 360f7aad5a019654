"""Networks: shapes from 8x8 to 64x64, dtypes, embeddings, no batch coupling."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import cifar10, digits, mnist, shapes
from vdae.models import embedding, encoder, unet
from vdae.models.network import Network

SHAPES_ACCELERATOR = lambda: shapes.get_config("accelerator")


@pytest.mark.parametrize(
  "get_config,shape",
  [
    (digits.get_config, (8, 8, 1)),
    (mnist.get_config, (28, 28, 1)),
    (cifar10.get_config, (32, 32, 3)),
    (cifar10.get_config, (64, 64, 3)),
    (shapes.get_config, (16, 16, 3)),
    (SHAPES_ACCELERATOR, (32, 32, 3)),
    (SHAPES_ACCELERATOR, (64, 64, 3)),
  ],
)
def test_unet_shapes_for_every_experiment_config(get_config, shape):
  """eval_shape: no FLOPs spent, but every level and skip must line up."""
  c = get_config()
  model = unet.from_config(c.model, c.sde)
  x = jax.ShapeDtypeStruct((2, *shape), jnp.float32)
  t = jax.ShapeDtypeStruct((2,), jnp.float32)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), shape))
  out = jax.eval_shape(lambda v, x, t: model.apply(v, x, t), variables, x, t)
  assert out.shape == x.shape and out.dtype == jnp.float32
  enc = encoder.from_config(c.encoder, c.model, c.sde)
  ev = jax.eval_shape(lambda: enc.init(jax.random.key(0), shape))
  mu, lv = jax.eval_shape(lambda v, x, t: enc.apply(v, x, t), ev, x, t)
  assert mu.shape == lv.shape == (2, c.encoder.latent_dim)


def test_the_shapes_accelerator_config_shards_over_4_devices():
  """Its parameters get a layout on a (data=4) mesh and on a (data=2, fsdp=2) one (the
  largest dims split, small leaves replicated), and its batches split over 4 devices."""
  from vdae.parallel import sharding

  c = SHAPES_ACCELERATOR()
  model = unet.from_config(c.model, c.sde)
  v = jax.eval_shape(lambda: model.init(jax.random.key(0), (32, 32, 3)))
  for data, fsdp in ((-1, 1), (2, 2)):
    c.mesh.data, c.mesh.fsdp = data, fsdp
    mesh = sharding.make_mesh(c.mesh)
    sh = sharding.state_shardings(v, mesh, c.mesh.param_rules)
    split = [s for s in jax.tree.leaves(sh) if any(a is not None for a in s.spec)]
    assert bool(split) == (fsdp > 1)
    for group in (c.stage1, c.stage2, c.vae, c.prior):
      sharding.check_batch(group.batch_size, mesh)


def test_cifar10_is_literature_scale():
  c = cifar10.get_config()
  model = unet.from_config(c.model, c.sde)
  v = jax.eval_shape(lambda: model.init(jax.random.key(0), (32, 32, 3)))
  n = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(v))
  assert 30e6 < n < 120e6, n  # DDPM++-sized (tens of millions of parameters)


@pytest.mark.parametrize("emb,dtype", [("sinusoidal", "bfloat16"), ("fourier", "float32")])
def test_unet_runs_with_bf16_compute_and_fourier_embedding(emb, dtype):
  model = Network(
    unet.UNet,
    channels=8,
    channel_mults=(1, 2),
    num_res_blocks=1,
    attn_resolutions=(4,),
    groups=4,
    embedding=emb,
    temb_dim=16,
    dtype=jnp.dtype(dtype),
  )
  x = jax.random.normal(jax.random.key(0), (3, 8, 8, 1))
  t = jnp.array([0.1, 0.5, 0.9])
  # Jitted: one compile, not one per op (most of this test's time when eager).
  params = jax.jit(model.init, static_argnums=1)(jax.random.key(1), x.shape[1:])
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))  # params stay f32
  out = jax.jit(model.apply)(params, x, t)
  assert out.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(out)))


def test_precomputed_time_features_equal_computed_ones():
  model = Network(
    unet.UNet, channels=8, channel_mults=(1,), num_res_blocks=1, groups=4, temb_dim=16
  )
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 1))
  t = jnp.array([0.3, 0.8])
  params = model.init(jax.random.key(1), x.shape[1:])
  params = jax.tree.map(lambda p: p + 0.1, params)  # make every block active
  a = model.apply(params, x, t)
  b = model.apply(params, x, t, False, embedding.sinusoidal(t, 16, 1000.0))
  np.testing.assert_allclose(a, b, rtol=1e-6)
  c = model.apply(params, x, t, False, embedding.sinusoidal(t + 0.1, 16, 1000.0))
  assert not np.allclose(a, c)


def test_encoder_has_no_batch_coupling():
  """Each example's (mu, log_var) depends on its own input only."""
  enc = Network(encoder.Encoder, latent_dim=3, channels=8, groups=4, temb_dim=16)
  x = jax.random.normal(jax.random.key(0), (4, 8, 8, 1))
  t = jnp.array([0.0, 0.2, 0.5, 0.9])
  params = enc.init(jax.random.key(1), x.shape[1:])
  mu, lv = enc.apply(params, x, t)
  x2 = x.at[1:].set(jax.random.normal(jax.random.key(2), (3, 8, 8, 1)))
  mu2, lv2 = enc.apply(params, x2, t)
  np.testing.assert_allclose(mu[0], mu2[0], rtol=1e-6)
  np.testing.assert_allclose(lv[0], lv2[0], rtol=1e-6)
  assert not np.allclose(mu[1], mu2[1])


def test_encoder_with_fourier_features_is_finite_at_t0_and_reads_fourier_scale(tiny_config):
  """The encoder sees clean images at t = 0, where log t is -inf: t is clamped to
  sde.eps. Its Fourier features use model.fourier_scale like the score network's."""
  c = tiny_config
  c.model.embedding = "fourier"
  enc = encoder.from_config(c.encoder, c.model, c.sde)
  x = jax.random.normal(jax.random.key(1), (2, 8, 8, 1))
  params = encoder.init_params(enc, jax.random.key(0), (8, 8, 1))
  mu, lv = enc.apply(params, x, jnp.zeros((2,)))
  assert np.all(np.isfinite(mu)) and np.all(np.isfinite(lv))
  at_eps = enc.apply(params, x, jnp.full((2,), c.sde.eps))
  np.testing.assert_array_equal(mu, at_eps[0])  # t = 0 is read as t = eps
  w = params["TimeEmbedding_0"]["FourierFeatures_0"]["w"]
  c.model.fourier_scale = 0.5
  small = encoder.from_config(c.encoder, c.model, c.sde)
  w_small = encoder.init_params(small, jax.random.key(0), (8, 8, 1))["TimeEmbedding_0"][
    "FourierFeatures_0"
  ]["w"]
  np.testing.assert_allclose(np.asarray(w_small) * 32.0, np.asarray(w), rtol=1e-5)


@pytest.mark.parametrize("side,mults", [(7, (1, 2)), (5, (1, 2, 2)), (4, (1, 2, 2))])
def test_odd_and_smallest_sides_round_trip_through_the_unet(tiny_config, side, mults):
  from vdae.models import sizes

  c = tiny_config
  c.model.channel_mults = mults
  c.model.attn_resolutions = ()
  sizes.check_score_model(c.model, (side, side, 1))  # accepted...
  model = unet.from_config(c.model, c.sde)
  x = jnp.zeros((2, side, side, 1))
  v = model.init(jax.random.key(0), x.shape[1:])
  assert model.apply(v, x, jnp.ones(2)).shape == x.shape  # ...and reproduced


def test_sizes_below_the_downsampling_are_refused(tiny_config):
  from vdae.io.errors import DataError
  from vdae.models import sizes

  c = tiny_config
  c.model.channel_mults = (1, 2, 2)
  with pytest.raises(
    DataError, match=r"3x3 are too small .*model.channel_mults=\(1, 2, 2\).*at least 4"
  ):
    sizes.check_score_model(c.model, (3, 3, 1))
  c.encoder.channel_mults = (1, 2)
  with pytest.raises(DataError, match=r"encoder.channel_mults.*at least 2"):
    sizes.check_encoder(c.encoder, (1, 1, 1))
  with pytest.raises(DataError, match=r"vae.decoder_channel_mults=\(2, 1\).*divide by 2"):
    sizes.check_vae_decoder(c.vae, (6, 7, 1))


def test_dropout_draws_from_the_key_it_is_given_and_only_in_training():
  model = Network(
    unet.UNet, channels=8, channel_mults=(1,), num_res_blocks=1, groups=4, temb_dim=16, dropout=0.5
  )
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 1))
  t = jnp.array([0.3, 0.8])
  params = jax.tree.map(lambda p: p + 0.1, model.init(jax.random.key(1), x.shape[1:]))
  run = jax.jit(
    lambda k, train: model.apply(params, x, t, train, rngs={"dropout": k}), static_argnums=1
  )
  a, b = run(jax.random.key(2), True), run(jax.random.key(3), True)
  np.testing.assert_array_equal(a, run(jax.random.key(2), True))  # a key gives one mask
  assert not np.allclose(a, b)  # another key another
  off = run(jax.random.key(2), False)
  np.testing.assert_array_equal(off, run(jax.random.key(3), False))  # no draw at evaluation
  assert not np.allclose(a, off)
