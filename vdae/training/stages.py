"""The trained stages, each declared once as a `Stage` subclass, and the table of them.

A stage's class attributes name its directory (WORKDIR/<name>/, also its TensorBoard run
and its config group, whose fields are schema.STAGE_FIELDS), the --mode that trains it
and the config keys that must match to resume or to load it; its classmethods are what
a reader needs with only a config and a workdir (`init`, `check_shape`, `source`,
`imported`). Constructed on a run's `Context`, it builds that run's parts: `loss_fn`,
`frozen` (earlier stages' parameters), `meta` (recorded in every checkpoint) and
`images`; `loop.Trainer` runs it with the sizes of its config group.

From the table, by stage name: trainer / train (--mode=pretrain, train_encoder,
train_prior, train_vae, train_refiner); load_stage, is_trained, trained_step,
checkpoint_dir, read_meta (training/loading.py: every reader gets the same checks and
messages); score_pairing / check_pairing (training/provenance.py).

A stage can also be imported instead of trained (`Stage.imported`): the score model
with model.source=diffusers comes from a pretrained DDPM directory
(vdae/io/pretrained.py). It then counts as trained, `train` has nothing to do, and
`load_stage` reads the directory; every reader is unchanged.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from vdae.autoencoders import refined_vae
from vdae.autoencoders import vae as vae_lib
from vdae.autoencoders.vdae import VDAE, make_encode_fn
from vdae.data import sources
from vdae.diffusion import losses, samplers, score
from vdae.diffusion import sde as sde_lib
from vdae.io import pretrained
from vdae.kernels.reference import StepSpec
from vdae.latent import objective
from vdae.latent import prior as prior_lib
from vdae.models import encoder as encoder_lib
from vdae.models import sizes
from vdae.parallel import sharding
from vdae.training import loading, provenance
from vdae.training.loop import Trainer
from vdae.types import Key, Params

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


class Stage:
  """A trained stage. Subclasses set the class attributes, `init`, and build the run's
  parts in `__init__` (calling this one first)."""

  name: ClassVar[str]  # directory, TensorBoard run and config group
  mode: ClassVar[str]  # the --mode that trains it
  what: ClassVar[str]  # how messages name its checkpoint ("no stage-1 checkpoint")
  title: ClassVar[str]  # its loss-curve panel's
  compare_keys: ClassVar[tuple[str, ...]]  # config keys that must match to resume or load
  source_key: ClassVar[str | None] = None  # "group.field": a workdir readers look in instead
  # What its checkpoints record of the stage it was trained on: (meta field, that stage's
  # name, how messages name what it trained on); checked on resume and on load.
  upstream: ClassVar[tuple[str, str, str] | None] = None

  # --- the declaration: a config and a workdir are enough -----------------------------
  @classmethod
  def init(cls, config, image_shape) -> Callable[[Key], Params]:
    """init_params(key) -> params."""
    raise NotImplementedError

  @classmethod
  def check_shape(cls, config, image_shape) -> None:
    """DataError if its networks cannot take images of this shape."""

  @classmethod
  def source(cls, config, workdir: str) -> str:
    """The workdir that holds its checkpoints for readers."""
    if cls.source_key:
      group, field = cls.source_key.split(".")
      return config[group][field] or workdir
    return workdir

  @classmethod
  def imported(cls, config) -> bool:
    """True when its parameters are imported, not trained here."""
    return False

  @classmethod
  def check_upstream(cls, recorded: dict, config, workdir: str) -> None:
    """CheckpointError if the stage it was trained on has moved on since."""
    if cls.upstream:
      field, name, trained_on = cls.upstream
      up = STAGES[name]
      provenance.check_upstream_step(cls, recorded, field, up, trained_on, config, workdir)

  # --- the run's parts ----------------------------------------------------------------
  loss_fn: Callable  # (params, batch, key, frozen) -> (loss, aux)

  def __init__(self, ctx: Context):
    self.ctx, self.config = ctx, ctx.config
    self.group = ctx.config[self.name]  # its sizes: schema.STAGE_FIELDS
    self.init_params = self.init(ctx.config, ctx.image_shape)
    self.frozen: Any = None  # earlier stages' parameters: a step argument, never optimised
    self.meta: dict = {}  # recorded in every checkpoint

  def check_resume(self) -> None:
    """check_upstream on its own newest checkpoint, when it has one to resume."""
    me, c, wd = type(self), self.config, self.ctx.workdir
    if loading.is_trained(me, c, wd):
      self.check_upstream(loading.read_meta(me, c, wd), c, wd)

  def record_upstream(self) -> None:
    """Records the step the stage it is trained on is at now (checked by check_upstream)."""
    field, name, _ = self.upstream
    self.meta.update(provenance.upstream_record(field, STAGES[name], self.config, self.ctx.workdir))

  def images(self, state, step: int) -> dict[str, np.ndarray]:
    """{tag: [N, H, W, C] in [-1, 1]} for TensorBoard."""
    del state, step
    return {}


# --- stage 1: the score model ------------------------------------------------------
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


class ScoreModel(Stage):
  name, mode, what, title = "stage1", "pretrain", "stage-1", "score model (DSM)"
  compare_keys = ("model", "sde")
  source_key = "stage2.stage1_workdir"

  @classmethod
  def init(cls, config, image_shape):
    model = score.model_from_config(config)
    return lambda key: score.init_params(model, key, image_shape)

  @classmethod
  def check_shape(cls, config, image_shape):
    if cls.imported(config):
      path = config.model.path
      pretrained.check_image_shape(pretrained.unet_spec(path), tuple(image_shape), path)
    else:
      sizes.check_score_model(config, image_shape)

  @classmethod
  def imported(cls, config):
    return config.model.source != "native"

  def __init__(self, ctx):
    super().__init__(ctx)
    cfg = ctx.config
    model, sde = score.model_from_config(cfg), sde_lib.from_config(cfg.sde)

    def loss_fn(params, batch, key, frozen):
      del frozen
      k_loss, k_drop = jax.random.split(key)
      eps_fn = score.eps_fn_for(model, params, cfg, train=True, rngs={"dropout": k_drop})
      return losses.dsm_loss(eps_fn, batch["image"], k_loss, sde, cfg.stage1.likelihood_weighting)

    self.loss_fn = loss_fn
    n = min(cfg.sampling.num_samples, 64)
    self._sample = functools.cache(lambda: make_sample_fn(cfg, (n, *ctx.image_shape), ctx.mesh))

  def images(self, state, step):
    out = self._sample()(state.ema_params, jax.random.key(step))
    return {"samples": sharding.to_host(out)}  # a gather when multi-process


# --- stage 2: the encoder on the frozen score model ----------------------------------
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


class Encoder(Stage):
  name, mode, what, title = "stage2", "train_encoder", "encoder", "encoder (VDAE)"
  compare_keys = ("model", "sde", "encoder")

  @classmethod
  def init(cls, config, image_shape):
    enc = encoder_lib.from_config(config.encoder, config.model, config.sde)
    return lambda key: encoder_lib.init_params(enc, key, image_shape)

  @classmethod
  def check_shape(cls, config, image_shape):
    ScoreModel.check_shape(config, image_shape)
    sizes.check_encoder(config, image_shape)

  def __init__(self, ctx, score_params=None):
    """score_params: the score model's (a benchmark's); by default the stage-1
    checkpoint's, read and paired before anything of stage 2 is written."""
    super().__init__(ctx)
    if score_params is None:
      score_params, _ = load_stage("stage1", ctx.config, ctx.workdir, ctx.mesh, ctx.image_shape)
      self.check_resume()
      self.meta.update(score_pairing(ctx.config, ctx.workdir))
    self.loss_fn, self.frozen = make_encoder_loss(ctx.config), score_params
    self._ae = VDAE(ctx.config, score_params, None, ctx.mesh, ctx.image_shape)
    self._x = ctx.recon_batch()

  def check_resume(self):
    c, wd = self.config, self.ctx.workdir
    if loading.is_trained(Encoder, c, wd):
      check_pairing(loading.read_meta(Encoder, c, wd), c, wd, "resume the encoder")

  def images(self, state, step):
    self._ae.enc_params = state.ema_params
    rec = self._ae.reconstruct(self._x, jax.random.key(step))
    return {"reconstructions": np.concatenate([self._x, rec], axis=0)}


# --- the latent prior: a diffusion model over the encoder's codes ----------------------
def _encode_at_zero(config):
  """jit(enc_params, x) -> (mu, log_var) of q(z | x_0): the VDAE's own encode."""
  return make_encode_fn(encoder_lib.from_config(config.encoder, config.model, config.sde))


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


class Prior(Stage):
  name, mode, what, title = "prior", "train_prior", "latent prior", "latent prior (DSM on codes)"
  compare_keys = ("sde", "encoder") + tuple(f"prior.{f}" for f in ("width", "depth", "temb_dim"))
  upstream = ("encoder_step", "stage2", "the codes of the encoder")

  @classmethod
  def init(cls, config, image_shape):
    del image_shape
    model = prior_lib.model_from_config(config)
    return lambda key: prior_lib.init_params(model, key)

  def __init__(self, ctx):
    super().__init__(ctx)
    cfg = ctx.config
    enc_params, meta = load_stage("stage2", cfg, ctx.workdir, ctx.mesh, ctx.image_shape)
    check_pairing(meta, cfg, ctx.workdir, "train the latent prior")
    self.check_resume()
    split = ctx.splits["train"]
    posteriors = [split_posteriors(cfg, enc_params, split, ctx.mesh)]
    # q(z)'s moments over the images as stored (flips or not).
    self.norm = norm = prior_lib.Normaliser.from_posteriors(*posteriors[0])
    rep = lambda a: sharding.replicated_from_host(a, ctx.mesh)
    model, sde = prior_lib.model_from_config(cfg), sde_lib.from_config(cfg.sde)
    rows = np.arange(len(split)) if split.rows is None else np.asarray(split.rows)
    flips = bool(cfg.data.random_flip)
    size = prior_lib.PosteriorTable.nbytes_for(int(rows.max()) + 1, cfg.encoder.latent_dim, flips)
    if size <= POSTERIOR_TABLE_MAX_BYTES:
      if flips:
        posteriors.append(split_posteriors(cfg, enc_params, split, ctx.mesh, flip=True))
      table = prior_lib.PosteriorTable.from_rows(rows, posteriors)
      self.loss_fn = prior_lib.prior_loss_from_table(model, sde)
      self.frozen = (rep(table.mu), rep(table.log_var), rep(norm.shift), rep(norm.scale))
      log.info("prior: posteriors of %d images looked up, not encoded each step", len(split))
    else:
      self.loss_fn = prior_lib.prior_loss(model, _encode_at_zero(cfg), sde)
      self.frozen = (enc_params, rep(norm.shift), rep(norm.scale))
      log.info("prior: a %.0f MiB posterior table would not fit: encoding each step", size / 2**20)
    self.meta.update(norm.meta())
    self.record_upstream()
    self._enc_params = enc_params

  @functools.cached_property
  def _vdae(self) -> VDAE:
    ctx = self.ctx
    score_params, _ = load_stage("stage1", self.config, ctx.workdir, ctx.mesh, ctx.image_shape)
    return VDAE(self.config, score_params, self._enc_params, ctx.mesh, ctx.image_shape)

  def images(self, state, step):
    z = prior_lib.LearnedPrior(self.config, state.ema_params, self.norm).sample(
      16, jax.random.key(step)
    )
    return {"samples": self._vdae.decode(z, jax.random.key(step + 1))}


def load_prior(config, workdir: str, mesh, image_shape, step=None) -> prior_lib.LearnedPrior | None:
  """The trained latent prior for sampling.latent_prior (None: sample N(0, I)), its
  newest checkpoint or `step`'s.

  auto: the learned one when it has a checkpoint; learned: it, or a
  CheckpointError; standard_normal: None."""
  choice = config.sampling.latent_prior
  if choice == "standard_normal" or (choice == "auto" and not is_trained("prior", config, workdir)):
    return None
  params, meta = load_stage("prior", config, workdir, mesh, image_shape, step=step)
  Prior.check_upstream(meta, config, workdir)
  return prior_lib.LearnedPrior(config, params, prior_lib.Normaliser.from_meta(meta))


# --- the VAE baseline -----------------------------------------------------------------
class VAE(Stage):
  name, mode, what, title = "vae", "train_vae", "VAE", "VAE (-ELBO)"
  compare_keys = ("encoder",) + tuple(f"vae.{f}" for f in vae_lib.ARCH_FIELDS)

  @classmethod
  def init(cls, config, image_shape):
    model = vae_lib.model_from_config(config, image_shape)
    return lambda key: model.init(key, image_shape)

  @classmethod
  def check_shape(cls, config, image_shape):
    sizes.check_vae(config, image_shape)

  def __init__(self, ctx):
    super().__init__(ctx)
    model = vae_lib.model_from_config(ctx.config, ctx.image_shape)
    self._x = jnp.asarray(ctx.recon_batch())
    self._reconstruct = jax.jit(lambda p, x: model.decode(p, model.encode(p, x)[0]))
    self.loss_fn = model.loss_fn(ctx.config.vae.beta_kl)

  def images(self, state, step):
    del step
    rec = self._reconstruct(state.ema_params, self._x)
    return {"reconstructions": np.concatenate([np.asarray(self._x), sharding.to_host(rec)], axis=0)}


# --- the VAE + diffusion refiner ----------------------------------------------------
class Refiner(Stage):
  name, mode, what = "refiner", "train_refiner", "refiner"
  title = "VAE refiner (mean-reverting DSM)"
  compare_keys = (
    ("encoder",)
    + tuple(f"vae.{f}" for f in vae_lib.ARCH_FIELDS)
    + tuple(f"refiner.{f}" for f in refined_vae.ARCH_FIELDS)
  )
  upstream = ("vae_step", "vae", "the VAE's outputs")

  @classmethod
  def init(cls, config, image_shape):
    return refined_vae.init_params(config, image_shape)

  @classmethod
  def check_shape(cls, config, image_shape):
    sizes.check_refiner(config, image_shape)

  def __init__(self, ctx):
    super().__init__(ctx)
    cfg = ctx.config
    self._x, self._levels = ctx.recon_batch(), sources.data_levels(cfg)
    if cfg.refiner.joint:  # its own VAE, trained with it (refined_vae.make_loss)
      model = vae_lib.model_from_config(cfg, ctx.image_shape)
      self.loss_fn = refined_vae.make_loss(cfg, model, ctx.image_shape)
      self.meta["vae_beta_kl"] = float(cfg.vae.beta_kl)
      self._vae = None
      return
    vae_params, _ = load_stage("vae", cfg, ctx.workdir, ctx.mesh, ctx.image_shape)
    self.check_resume()
    self._vae = vae_lib.VAE(cfg, vae_params, ctx.image_shape, self._levels)
    self.loss_fn = refined_vae.make_loss(cfg, self._vae.model, ctx.image_shape)
    self.frozen = vae_params
    self.record_upstream()

  def images(self, state, step):
    cfg, ctx, p = self.config, self.ctx, state.ema_params
    joint = self._vae is None
    vae = vae_lib.VAE(cfg, p["vae"], ctx.image_shape, self._levels) if joint else self._vae
    refiner_params = p["refiner"] if joint else p
    ae = refined_vae.RefinedVAE(cfg, vae, refiner_params, ctx.mesh, ctx.image_shape)
    x_bar = vae.reconstruct(self._x)
    refined = ae.refine(x_bar, jax.random.key(step))
    return {"refined": np.concatenate([self._x, x_bar, refined], axis=0)}


STAGES: dict[str, type[Stage]] = {s.name: s for s in (ScoreModel, Encoder, Prior, VAE, Refiner)}


# --- by stage name ------------------------------------------------------------------
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
  return Trainer(STAGES[name](ctx))


def train(name: str, config, workdir: str, mesh=None, splits=None):
  """Trains stage `name` to its num_steps (resuming); returns the final state
  (None for an imported stage: nothing to train)."""
  if STAGES[name].imported(config):
    log.info("%s: imported from %s, nothing to train", name, config.model.path)
    return None
  return trainer(name, config, workdir, mesh, splits).train()


def checkpoint_dir(name: str, config, workdir: str) -> str:
  return loading.checkpoint_dir(STAGES[name], config, workdir)


def trained_step(name: str, config, workdir: str) -> int:
  return loading.trained_step(STAGES[name], config, workdir)


def read_meta(name: str, config, workdir: str) -> dict:
  return loading.read_meta(STAGES[name], config, workdir)


def is_trained(name: str, config, workdir: str) -> bool:
  return loading.is_trained(STAGES[name], config, workdir)


def load_stage(
  name: str, config, workdir: str, mesh, image_shape, use_ema: bool = True, step=None
) -> tuple[Params, dict]:
  return loading.load(STAGES[name], config, workdir, mesh, image_shape, use_ema, step)


def score_pairing(config, workdir: str) -> dict:
  return provenance.score_record(ScoreModel, config, workdir)


def check_pairing(recorded: dict, config, workdir: str, doing: str) -> None:
  provenance.check_score_pairing(ScoreModel, recorded, config, workdir, doing)
