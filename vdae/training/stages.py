"""The stage table: every trained stage declared once.

A `Stage` names its directory (WORKDIR/<name>/, also its TensorBoard run and
its config group, whose fields are schema.STAGE_FIELDS), the config keys
that must match to resume or to load it, how to initialise its parameters,
and how to build its loss, frozen inputs and pictures. From the table:

  stage_spec(name, ...)   the StageSpec the Trainer runs;
  train(name, config, workdir)   --mode=pretrain / train_encoder / train_prior / train_vae /
                                 train_refiner;
  load_stage(name, ...)   the loader every reader uses (same checks, same
                          messages); is_trained(name, ...) the "is it there?" check.

A stage can also be imported instead of trained (`Stage.imported`): the score
model with model.source=diffusers comes from a pretrained DDPM directory
(vdae/io/pretrained.py). It then counts as trained, `train` has nothing to do,
and `load_stage` reads the directory; every reader is unchanged.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vdae.autoencoders import refined_vae
from vdae.autoencoders import vae as vae_lib
from vdae.autoencoders.vdae import VDAE, make_encode_fn
from vdae.data import sources
from vdae.diffusion import losses, samplers, score
from vdae.diffusion import sde as sde_lib
from vdae.io import files, pretrained
from vdae.io.errors import CheckpointError, ConfigError
from vdae.kernels.reference import StepSpec
from vdae.latent import objective
from vdae.latent import prior as prior_lib
from vdae.models import encoder as encoder_lib
from vdae.models import sizes
from vdae.parallel import sharding
from vdae.training import checkpoint, restore
from vdae.training import state as state_lib
from vdae.training.loop import StageSpec, Trainer
from vdae.types import Key, LossFn, Params

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Context:
  """What a stage is built from: the run's config, workdir, mesh and data."""

  config: Any
  workdir: str
  mesh: Any
  splits: dict[str, sources.Split]

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return tuple(self.splits["train"].image_shape)

  def recon_batch(self, n: int = 16) -> np.ndarray:
    """The first n test images: the fixed batch of the reconstruction grids."""
    return self.splits["test"].arrays(n)["image"]


@dataclasses.dataclass(frozen=True)
class Built:
  loss_fn: LossFn
  frozen: Any = None
  images: Callable[[Any, int], dict[str, np.ndarray]] | None = None
  extra_meta: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Stage:
  name: str  # directory, TensorBoard run and config group
  mode: str  # the --mode that trains it
  what: str  # how messages name its checkpoint ("the stage-1 checkpoint")
  title: str  # the loss-curve panel's
  compare_keys: tuple[str, ...]  # config keys that must match to resume or load
  # (config, image_shape) -> init_params(key) -> params
  init: Callable[[Any, tuple], Callable[[Key], Params]]
  build: Callable[[Context], Built]
  # (config, image_shape) -> None, or a DataError if the networks cannot take the images
  check_shape: Callable[[Any, tuple], None]
  # Where readers find it: (config, workdir) -> the workdir holding its checkpoints.
  source: Callable[[Any, str], str] = lambda config, workdir: workdir
  # config -> True when the stage's parameters are imported, not trained here
  imported: Callable[[Any], bool] = lambda config: False


# --- stage 1: the score model ------------------------------------------------------
def _score_init(config, image_shape):
  model = score.model_from_config(config)
  return lambda key: score.init_params(model, key, image_shape)


def make_sample_fn(config, shape, mesh):
  """f(score_params, key) -> unconditional samples [N, H, W, C], replicated."""
  model = score.model_from_config(config)
  fn = samplers.compile_sampler(
    lambda params: (score.eps_fn_for(model, params, config), None),
    config.sampling,
    sde_lib.from_config(config.sde),
    StepSpec.from_config(config),
    shape,
    out_sharding=sharding.replicated(mesh),
  )
  return lambda params, key: fn(params, key)


def _score_build(ctx: Context) -> Built:
  cfg = ctx.config
  model, sde = score.model_from_config(cfg), sde_lib.from_config(cfg.sde)

  def loss_fn(params, batch, key, frozen):
    del frozen
    k_loss, k_drop = jax.random.split(key)
    eps_fn = score.eps_fn_for(model, params, cfg, train=True, rngs={"dropout": k_drop})
    return losses.dsm_loss(eps_fn, batch["image"], k_loss, sde, cfg.stage1.likelihood_weighting)

  n = min(cfg.sampling.num_samples, 64)
  sample = functools.cache(lambda: make_sample_fn(cfg, (n, *ctx.image_shape), ctx.mesh))

  def images(state, step):
    out = sample()(state.ema_params, jax.random.key(step))
    return {"samples": sharding.to_host(out)}  # a gather when multi-process

  return Built(loss_fn, None, images)


# --- stage 2: the encoder on the frozen score model ----------------------------------
def _encoder_init(config, image_shape):
  enc = encoder_lib.from_config(config.encoder, config.model, config.sde)
  return lambda key: encoder_lib.init_params(enc, key, image_shape)


def make_encoder_loss(config, correction_impl: str = "reverse", kernel: str | None = None):
  """loss_fn(enc_params, batch, key, score_params) -> (loss, aux)."""
  score_model = score.model_from_config(config)
  enc = encoder_lib.from_config(config.encoder, config.model, config.sde)
  sde, spec, s2 = sde_lib.from_config(config.sde), StepSpec.from_config(config), config.stage2

  def loss_fn(params, batch, key, score_params):
    return objective.vdae_loss(
      lambda x, t: score_model.apply({"params": score_params}, x, t),
      lambda x, t: enc.apply({"params": params}, x, t),
      batch["image"],
      key,
      sde,
      spec,
      beta_kl=s2.beta_kl,
      form=s2.loss,
      logvar_term=config.encoder.logvar_term,
      time_sampling=s2.time_sampling,
      weighting=s2.weighting,
      weight_cap=s2.weight_cap,
      kernel=config.sampling.kernel if kernel is None else kernel,
      correction_impl=correction_impl,
    )

  return loss_fn


def _score_imported(config) -> bool:
  return config.model.source != "native"


def score_pairing(config, workdir: str) -> dict:
  """Which score parameters stage 2 trains its encoder against (recorded in its
  checkpoints): the stage-1 EMA parameters at stage 1's newest step, or the
  imported model's source and weights hash."""
  if _score_imported(config):
    return {
      "score_params": "imported",
      "score_source": f"diffusers:{os.path.abspath(config.model.path)}",
      "score_sha256": pretrained.weights_sha256(config.model.path),
    }
  return {"score_params": "ema", "score_step": trained_step("stage1", config, workdir)}


def check_pairing(recorded: dict, config, workdir: str, doing: str) -> None:
  """ConfigError / CheckpointError if the encoder would meet other score parameters
  than those it was trained against (old checkpoints record nothing: EMA assumed)."""
  now = score_pairing(config, workdir)
  was = recorded.get("score_sha256")
  if was is not None or "score_sha256" in now:
    if was != now.get("score_sha256"):
      trained = recorded.get("score_source", "vdae's own stage 1")
      raise CheckpointError(
        f"the encoder was trained against the score model {trained} (weights sha256 "
        f"{str(was)[:12]}), but this run's is {now.get('score_source', 'the stage-1 checkpoint')} "
        f"(sha256 {str(now.get('score_sha256'))[:12]}); {doing} in a new --workdir instead"
      )
    return
  if not config.sampling.use_ema:
    raise ConfigError(
      f"sampling.use_ema=false would {doing} with the raw stage-1 parameters, but the "
      "encoder is trained against the EMA ones; drop the override (it applies only to "
      "--mode=sample from the score model alone)"
    )
  step = recorded.get("score_step")
  if step is not None and step != now["score_step"]:
    raise CheckpointError(
      f"the encoder was trained against stage-1 step {step}, but the stage-1 checkpoint "
      f"in {STAGES['stage1'].source(config, workdir)} is now at step {now['score_step']}; "
      "retrain the encoder in a new --workdir (point --config.stage2.stage1_workdir at "
      "this one)"
    )


def _encoder_build(ctx: Context) -> Built:
  # Fails cleanly (CheckpointError) before anything of stage 2 is written.
  score_params, _ = load_stage("stage1", ctx.config, ctx.workdir, ctx.mesh, ctx.image_shape)
  if is_trained("stage2", ctx.config, ctx.workdir):
    check_pairing(
      read_meta("stage2", ctx.config, ctx.workdir), ctx.config, ctx.workdir, "resume the encoder"
    )
  ae = VDAE(ctx.config, score_params, None, ctx.mesh, ctx.image_shape)
  x = ctx.recon_batch()

  def images(state, step):
    ae.enc_params = state.ema_params
    rec = ae.reconstruct(x, jax.random.key(step))
    return {"reconstructions": np.concatenate([x, rec], axis=0)}

  return Built(
    make_encoder_loss(ctx.config),
    score_params,
    images,
    extra_meta=score_pairing(ctx.config, ctx.workdir),
  )


# --- the latent prior: a diffusion model over the encoder's codes ----------------------
def _prior_init(config, image_shape):
  del image_shape
  model = prior_lib.model_from_config(config)
  return lambda key: prior_lib.init_params(model, key)


def _encode_at_zero(config):
  """jit(enc_params, x) -> (mu, log_var) of q(z | x_0): the VDAE's own encode."""
  return make_encode_fn(encoder_lib.from_config(config.encoder, config.model, config.sde))


def prior_pairing(config, workdir: str) -> dict:
  """Which encoder the prior's codes come from: stage 2 at its newest step."""
  return {"encoder_step": trained_step("stage2", config, workdir)}


def _check_upstream_step(recorded, field, upstream, name, trained_on, config, workdir) -> None:
  """CheckpointError if stage `name` was trained on `upstream` at another step than
  the one `upstream` is at now (recorded[field]; absent in old checkpoints: unchecked)."""
  step, now = recorded.get(field), trained_step(upstream, config, workdir)
  if step is not None and step != now:
    raise CheckpointError(
      f"the {STAGES[name].what} was trained on {trained_on} at step {step}, but {upstream} "
      f"is now at step {now}; delete {checkpoint_dir(name, config, workdir)} and run "
      f"--mode={STAGES[name].mode} again"
    )


def check_prior_pairing(recorded: dict, config, workdir: str) -> None:
  what = "the codes of the encoder"
  _check_upstream_step(recorded, "encoder_step", "stage2", "prior", what, config, workdir)


def split_posteriors(config, enc_params, split: sources.Split, mesh, flip: bool = False):
  """(mu, log_var) [N, L] of q(z | x_0) for the split's images in order (mirrored: flip)."""
  from vdae.data import pipeline  # the loader's batching, padded with a mask

  encode = _encode_at_zero(config)
  mus, lvs = [], []
  for b in pipeline.eval_batches(split, config.eval.batch_size):
    x = b["image"][:, :, ::-1] if flip else b["image"]
    mu, lv = encode(enc_params, sharding.replicated_from_host(x, mesh))
    mus.append(sharding.to_host(mu)[b["valid"]])
    lvs.append(sharding.to_host(lv)[b["valid"]])
  return np.concatenate(mus), np.concatenate(lvs)


# A posterior table this large is not worth a device's memory: encode every step instead.
POSTERIOR_TABLE_MAX_BYTES = 256 * 2**20


def _prior_build(ctx: Context) -> Built:
  cfg = ctx.config
  enc_params, meta = load_stage("stage2", cfg, ctx.workdir, ctx.mesh, ctx.image_shape)
  check_pairing(meta, cfg, ctx.workdir, "train the latent prior")
  if is_trained("prior", cfg, ctx.workdir):
    check_prior_pairing(read_meta("prior", cfg, ctx.workdir), cfg, ctx.workdir)
  split = ctx.splits["train"]
  posteriors = [split_posteriors(cfg, enc_params, split, ctx.mesh)]
  # q(z)'s moments over the images as stored (flips or not), as they always were.
  norm = prior_lib.Normaliser.from_posteriors(*posteriors[0])
  rep = lambda a: sharding.replicated_from_host(a, ctx.mesh)
  model, sde = prior_lib.model_from_config(cfg), sde_lib.from_config(cfg.sde)
  rows = np.arange(len(split)) if split.rows is None else np.asarray(split.rows)
  flips = bool(cfg.data.random_flip)
  size = prior_lib.PosteriorTable.nbytes_for(int(rows.max()) + 1, cfg.encoder.latent_dim, flips)
  if size <= POSTERIOR_TABLE_MAX_BYTES:
    if flips:
      posteriors.append(split_posteriors(cfg, enc_params, split, ctx.mesh, flip=True))
    table = prior_lib.PosteriorTable.from_rows(rows, posteriors)
    loss_fn = prior_lib.prior_loss_from_table(model, sde)
    frozen = (rep(table.mu), rep(table.log_var), rep(norm.shift), rep(norm.scale))
    log.info("prior: posteriors of %d images looked up, not encoded each step", len(split))
  else:
    loss_fn = prior_lib.prior_loss(model, _encode_at_zero(cfg), sde)
    frozen = (enc_params, rep(norm.shift), rep(norm.scale))
    log.info("prior: a %.0f MiB posterior table would not fit: encoding each step", size / 2**20)

  @functools.cache
  def vdae():
    score_params, _ = load_stage("stage1", cfg, ctx.workdir, ctx.mesh, ctx.image_shape)
    return VDAE(cfg, score_params, enc_params, ctx.mesh, ctx.image_shape)

  def images(state, step):
    z = prior_lib.LearnedPrior(cfg, state.ema_params, norm).sample(16, jax.random.key(step))
    return {"samples": vdae().decode(z, jax.random.key(step + 1))}

  return Built(
    loss_fn,
    frozen,
    images,
    extra_meta={**norm.meta(), **prior_pairing(cfg, ctx.workdir)},
  )


def load_prior(config, workdir: str, mesh, image_shape, step=None) -> prior_lib.LearnedPrior | None:
  """The trained latent prior for sampling.latent_prior (None: sample N(0, I)), its
  newest checkpoint or `step`'s.

  auto: the learned one when it has a checkpoint; learned: it, or a
  CheckpointError; standard_normal: None."""
  choice = config.sampling.latent_prior
  if choice == "standard_normal" or (choice == "auto" and not is_trained("prior", config, workdir)):
    return None
  params, meta = load_stage("prior", config, workdir, mesh, image_shape, step=step)
  check_prior_pairing(meta, config, workdir)
  return prior_lib.LearnedPrior(config, params, prior_lib.Normaliser.from_meta(meta))


# --- the VAE baseline -----------------------------------------------------------------
def _vae_init(config, image_shape):
  model = vae_lib.model_from_config(config, image_shape)
  return lambda key: model.init(key, image_shape)


def _vae_build(ctx: Context) -> Built:
  model = vae_lib.model_from_config(ctx.config, ctx.image_shape)
  x = jnp.asarray(ctx.recon_batch())
  reconstruct = jax.jit(lambda p, x: model.decode(p, model.encode(p, x)[0]))

  def images(state, step):
    del step
    rec = reconstruct(state.ema_params, x)
    return {"reconstructions": np.concatenate([np.asarray(x), sharding.to_host(rec)], axis=0)}

  return Built(model.loss_fn(ctx.config.vae.beta_kl), None, images)


# --- the VAE + diffusion refiner ----------------------------------------------------
def _refiner_init(config, image_shape):
  return refined_vae.init_params(config, image_shape)


def check_refiner_pairing(recorded: dict, config, workdir: str) -> None:
  _check_upstream_step(recorded, "vae_step", "vae", "refiner", "the VAE's outputs", config, workdir)


def _refiner_build(ctx: Context) -> Built:
  cfg = ctx.config
  x = ctx.recon_batch()
  levels = sources.data_levels(cfg)
  if cfg.refiner.joint:  # its own VAE, trained with it (refined_vae.make_loss)
    model = vae_lib.model_from_config(cfg, ctx.image_shape)

    def images(state, step):
      p = state.ema_params
      vae = vae_lib.VAE(cfg, p["vae"], ctx.image_shape, levels)
      ae = refined_vae.RefinedVAE(cfg, vae, p["refiner"], ctx.mesh, ctx.image_shape)
      x_bar = vae.reconstruct(x)
      refined = ae.refine(x_bar, jax.random.key(step))
      return {"refined": np.concatenate([x, x_bar, refined], axis=0)}

    meta = {"vae_beta_kl": float(cfg.vae.beta_kl)}
    return Built(refined_vae.make_loss(cfg, model, ctx.image_shape), None, images, meta)

  vae_params, _ = load_stage("vae", cfg, ctx.workdir, ctx.mesh, ctx.image_shape)
  if is_trained("refiner", cfg, ctx.workdir):
    check_refiner_pairing(read_meta("refiner", cfg, ctx.workdir), cfg, ctx.workdir)
  vae = vae_lib.VAE(cfg, vae_params, ctx.image_shape, levels)

  def images(state, step):
    ae = refined_vae.RefinedVAE(cfg, vae, state.ema_params, ctx.mesh, ctx.image_shape)
    x_bar = vae.reconstruct(x)
    return {"refined": np.concatenate([x, x_bar, ae.refine(x_bar, jax.random.key(step))], axis=0)}

  return Built(
    refined_vae.make_loss(cfg, vae.model, ctx.image_shape),
    vae_params,
    images,
    extra_meta={"vae_step": trained_step("vae", cfg, ctx.workdir)},
  )


def _check_score_shape(config, shape) -> None:
  if _score_imported(config):
    path = config.model.path
    pretrained.check_image_shape(pretrained.unet_spec(path), tuple(shape), path)
  else:
    sizes.check_score_model(config, shape)


STAGES: dict[str, Stage] = {
  s.name: s
  for s in (
    Stage(
      "stage1",
      "pretrain",
      "stage-1",
      "score model (DSM)",
      ("model", "sde"),
      _score_init,
      _score_build,
      lambda config, shape: _check_score_shape(config, shape),
      source=lambda config, workdir: config.stage2.stage1_workdir or workdir,
      imported=_score_imported,
    ),
    Stage(
      "stage2",
      "train_encoder",
      "encoder",
      "encoder (VDAE)",
      ("model", "sde", "encoder"),
      _encoder_init,
      _encoder_build,
      lambda config, shape: (
        _check_score_shape(config, shape),
        sizes.check_encoder(config, shape),
      ),
    ),
    Stage(
      "prior",
      "train_prior",
      "latent prior",
      "latent prior (DSM on codes)",
      ("sde", "encoder") + tuple(f"prior.{f}" for f in ("width", "depth", "temb_dim")),
      _prior_init,
      _prior_build,
      lambda config, shape: None,
    ),
    Stage(
      "vae",
      "train_vae",
      "VAE",
      "VAE (-ELBO)",
      ("encoder",) + tuple(f"vae.{f}" for f in vae_lib.ARCH_FIELDS),
      _vae_init,
      _vae_build,
      sizes.check_vae,
    ),
    Stage(
      "refiner",
      "train_refiner",
      "refiner",
      "VAE refiner (mean-reverting DSM)",
      ("encoder",)
      + tuple(f"vae.{f}" for f in vae_lib.ARCH_FIELDS)
      + tuple(f"refiner.{f}" for f in refined_vae.ARCH_FIELDS),
      _refiner_init,
      _refiner_build,
      sizes.check_refiner,
    ),
  )
}


# --- built from the table -----------------------------------------------------------
def _optimizer(name: str, config):
  g = config[name]
  return state_lib.make_optimizer(g.lr, g.warmup_steps, g.num_steps, config.optim)


def stage_spec(name: str, ctx: Context) -> StageSpec:
  """The StageSpec of stage `name`: sizes from its config group, parts from the table."""
  stage, g = STAGES[name], ctx.config[name]
  built = stage.build(ctx)
  return StageSpec(
    name=name,
    init_params=stage.init(ctx.config, ctx.image_shape),
    loss_fn=built.loss_fn,
    compare_keys=stage.compare_keys,
    lr=g.lr,
    warmup=g.warmup_steps,
    num_steps=g.num_steps,
    batch_size=g.batch_size,
    log_every=g.log_every,
    image_every=g.image_every,
    checkpoint_every=g.checkpoint_every,
    frozen=built.frozen,
    images=built.images,
    extra_meta=built.extra_meta,
  )


def context(config, workdir: str, mesh=None, splits=None) -> Context:
  mesh = sharding.make_mesh(config.mesh) if mesh is None else mesh
  splits = sources.load_splits(config.data) if splits is None else splits
  return Context(config, workdir, mesh, splits)


def check_shapes(names, config, image_shape) -> None:
  """DataError, before anything is written, if a stage in `names` cannot take the images."""
  for name in names:
    STAGES[name].check_shape(config, tuple(image_shape))


def trainer(name: str, config, workdir: str, mesh=None, splits=None) -> Trainer:
  ctx = context(config, workdir, mesh, splits)
  check_shapes([name], config, ctx.image_shape)
  return Trainer(stage_spec(name, ctx), config, workdir, ctx.mesh, ctx.splits)


def train(name: str, config, workdir: str, mesh=None, splits=None):
  """Trains stage `name` to its num_steps (resuming); returns the final state
  (None for an imported stage: nothing to train)."""
  if STAGES[name].imported(config):
    log.info("%s: imported from %s, nothing to train", name, config.model.path)
    return None
  return trainer(name, config, workdir, mesh, splits).train()


def checkpoint_dir(name: str, config, workdir: str) -> str:
  return os.path.join(STAGES[name].source(config, workdir), name, "checkpoints")


def trained_step(name: str, config, workdir: str) -> int:
  """The newest checkpointed step of stage `name` (0 if it has none)."""
  names = files.listdir(checkpoint_dir(name, config, workdir))
  return max((int(s) for s in names if s.isdigit()), default=0)


def read_meta(name: str, config, workdir: str) -> dict:
  """The metadata recorded with stage `name`'s newest checkpoint."""
  ckpt = checkpoint.Checkpointer(
    checkpoint_dir(name, config, workdir), keep=1000, async_save=False, create=False
  )
  try:
    return ckpt.read_meta()
  finally:
    ckpt.close()


def is_trained(name: str, config, workdir: str) -> bool:
  """Whether stage `name` has a checkpoint where its readers look for it (an
  imported stage always has: its directory is checked when it is loaded)."""
  return STAGES[name].imported(config) or trained_step(name, config, workdir) > 0


def load_stage(
  name: str, config, workdir: str, mesh, image_shape, use_ema: bool = True, step=None
) -> tuple[Params, dict]:
  """(params, meta) of stage `name`'s newest checkpoint (or of `step`), sharded on `mesh`.

  Raises CheckpointError if it is missing or was trained with another config
  (the stage's compare_keys) or image shape.
  """
  stage = STAGES[name]
  if stage.imported(config):
    return pretrained.load_params(config, mesh, image_shape)
  opt, _ = _optimizer(name, config)
  hint = f"Run --mode={stage.mode} first"
  if name == "stage1":
    hint += ", or point --config.stage2.stage1_workdir at a workdir that has one"
  return restore.restore_params(
    checkpoint_dir(name, config, workdir),
    stage.init(config, tuple(image_shape)),
    opt,
    config,
    mesh,
    keys=stage.compare_keys,
    image_shape=image_shape,
    what=stage.what,
    run_first=hint + ".",
    use_ema=use_ema,
    step=step,
  )
