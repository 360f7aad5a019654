"""A diffusers DDPM directory -> Flax parameters + vdae's SDE.

The score-model stage's second source (`model.source=diffusers`, `model.path=DIR`;
vdae/training/stages/score_model.py): no second loader, the stage table asks this module
for the parameters instead of a checkpoint. Layouts read, as `save_pretrained` or a hub
snapshot leave them:

  DIR/config.json + DIR/diffusion_pytorch_model.safetensors [+ DIR/scheduler_config.json]
  DIR/unet/{config.json, diffusion_pytorch_model.safetensors} + DIR/scheduler/scheduler_config.json

Tensors are read with the `safetensors` package's numpy API (no torch), renamed
to the Flax tree of vdae/models/diffusers_unet.py, every tensor used exactly
once, upcast to float32 (vdae's parameter dtype; model.dtype is the compute
dtype), and laid out on the mesh by the same rules as stage 1's checkpoints.

The schedule bridge maps DDPMScheduler / DDIMScheduler configs onto vdae's SDE
(`schedule_from_json`); whatever it cannot represent exactly is an error, and
the difference between the continuous SDE and the discrete alphas_cumprod is
logged when the model is resolved (`resolve_config`).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import math
import os
from typing import Any

import jax
import numpy as np
from flax import traverse_util

from vdae.io.errors import CheckpointError, ConfigError, DataError, require_local
from vdae.models import diffusers_unet
from vdae.parallel import sharding

log = logging.getLogger(__name__)

WEIGHTS = "diffusion_pytorch_model.safetensors"
# diffusers' attention tensors before its 0.15 renaming (google/ddpm-* still ship them).
_OLD_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out_0"}


# --- the directory --------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Layout:
  config: str  # the UNet's config.json
  weights: str  # its safetensors file
  scheduler: str | None  # scheduler_config.json, if the directory has one


def find_layout(path: str) -> Layout:
  """Where the UNet's config, weights and scheduler config are under `path`."""
  if not path:
    raise ConfigError(
      "model.source=diffusers needs model.path: a directory written by save_pretrained "
      "or a downloaded hub snapshot"
    )
  require_local("model.path", path)
  if not os.path.isdir(path):
    raise CheckpointError(f"model.path={path}: no such directory")
  unet = os.path.join(path, "unet")
  if os.path.isfile(os.path.join(unet, "config.json")):
    sched = os.path.join(path, "scheduler", "scheduler_config.json")
    where = unet
  else:
    sched = os.path.join(path, "scheduler_config.json")
    where = path
  cfg = os.path.join(where, "config.json")
  if not os.path.isfile(cfg):
    raise CheckpointError(
      f"model.path={path}: no config.json there or in unet/; point it at a diffusers "
      "save_pretrained directory or hub snapshot"
    )
  weights = os.path.join(where, WEIGHTS)
  if not os.path.isfile(weights):
    others = sorted(f for f in os.listdir(where) if f.startswith("diffusion_pytorch_model"))
    hint = (
      f" (found {', '.join(others)}: vdae reads safetensors only; convert once with diffusers: "
      "UNet2DModel.from_pretrained(DIR).save_pretrained(DIR))"
      if others
      else ""
    )
    raise CheckpointError(f"model.path={path}: no {WEIGHTS} in {where}{hint}")
  return Layout(cfg, weights, sched if os.path.isfile(sched) else None)


def _read_json(path: str) -> dict:
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise CheckpointError(f"{path}: not readable as JSON ({e})") from e


@functools.lru_cache(maxsize=16)
def _spec_cached(path: str, mtime: float) -> diffusers_unet.UNetSpec:
  del mtime  # part of the key: an edited config.json is read again
  return diffusers_unet.UNetSpec.from_json(_read_json(path), path)


def unet_spec(path: str) -> diffusers_unet.UNetSpec:
  """The validated UNet2DModel spec of the diffusers directory `path`."""
  cfg = find_layout(path).config
  return _spec_cached(cfg, os.path.getmtime(cfg))


# --- the schedule bridge --------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Schedule:
  """A diffusers training schedule as vdae's SDE: sde.* fields + the eps conversion."""

  kind: str  # vdae's sde.kind: vp (linear betas) or vp_cosine (squaredcos_cap_v2)
  beta_min: float
  beta_max: float
  num_train_timesteps: int
  prediction_type: str  # epsilon | v_prediction | sample

  @property
  def time_scale(self) -> float:
    """The network's timestep is t * (N - 1): t = 1 is the last training timestep."""
    return float(self.num_train_timesteps - 1)

  def sde_fields(self) -> dict[str, Any]:
    return {
      "kind": self.kind,
      "beta_min": self.beta_min,
      "beta_max": self.beta_max,
      "time_scale": self.time_scale,
      "timesteps": self.num_train_timesteps,
    }


# PNDM trains on the same betas as DDPM; only its sampling loop differs.
SCHEDULERS = ("DDPMScheduler", "DDIMScheduler", "PNDMScheduler")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
# Fields that only shape diffusers' own sampling loop (vdae samples with its own
# solvers), so any value is compatible with the training schedule.
_SAMPLING_ONLY = (
  "variance_type",
  "clip_sample",
  "clip_sample_range",
  "thresholding",
  "dynamic_thresholding_ratio",
  "sample_max_value",
  "timestep_spacing",
  "steps_offset",
  "set_alpha_to_one",
  "skip_prk_steps",
)
_SCHEDULE_FIELDS = {
  "num_train_timesteps": 1000,
  "beta_start": 0.0001,
  "beta_end": 0.02,
  "beta_schedule": "linear",
  "trained_betas": None,
  "prediction_type": "epsilon",
  "rescale_betas_zero_snr": False,
}
_META = diffusers_unet.META  # the bookkeeping fields diffusers writes into every config


def schedule_from_json(cfg: dict, where: str) -> Schedule:
  """The SDE of a DDPM / DDIM / PNDM scheduler config (CheckpointError if not exact)."""

  def refuse(field, value, why):
    raise CheckpointError(f"{where}: {field}={value!r} cannot be imported ({why})")

  name = cfg.get("_class_name", "DDPMScheduler")
  if name not in SCHEDULERS:
    refuse("_class_name", name, f"supported: {', '.join(SCHEDULERS)}")
  for field in cfg:
    if field not in _SCHEDULE_FIELDS and field not in _SAMPLING_ONLY and field not in _META:
      refuse(field, cfg[field], "a field vdae does not know; it might change the schedule")
  c = {**_SCHEDULE_FIELDS, **{k: v for k, v in cfg.items() if k in _SCHEDULE_FIELDS}}
  if c["trained_betas"] is not None:
    refuse("trained_betas", "[...]", "an explicit beta list has no continuous-time SDE")
  if c["rescale_betas_zero_snr"]:
    refuse("rescale_betas_zero_snr", True, "the zero-terminal-SNR rescaling is not an SDE here")
  if c["prediction_type"] not in PREDICTION_TYPES:
    refuse("prediction_type", c["prediction_type"], f"supported: {', '.join(PREDICTION_TYPES)}")
  n = int(c["num_train_timesteps"])
  if n < 2:
    refuse("num_train_timesteps", n, "needs at least 2")
  if c["beta_schedule"] == "linear":
    # beta_i = beta_start + i / (N - 1) (beta_end - beta_start) at t = i / (N - 1):
    # the VP SDE's beta(t) = N beta_i (Song et al. 2021, appendix).
    return Schedule(
      "vp", n * float(c["beta_start"]), n * float(c["beta_end"]), n, c["prediction_type"]
    )
  if c["beta_schedule"] == "squaredcos_cap_v2":
    return Schedule("vp_cosine", 0.0, 0.0, n, c["prediction_type"])
  refuse("beta_schedule", c["beta_schedule"], "supported: linear, squaredcos_cap_v2")


def discrete_alphas_cumprod(cfg: dict) -> np.ndarray:
  """diffusers' alphas_cumprod for a scheduler config the bridge accepts (float64)."""
  c = {**_SCHEDULE_FIELDS, **{k: v for k, v in cfg.items() if k in _SCHEDULE_FIELDS}}
  n = int(c["num_train_timesteps"])
  if c["beta_schedule"] == "linear":
    betas = np.linspace(c["beta_start"], c["beta_end"], n, dtype=np.float64)
  else:
    f = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2
    betas = np.array([min(1 - f((i + 1) / n) / f(i / n), 0.999) for i in range(n)])
  return np.cumprod(1.0 - betas)


def scheduler_json(path: str) -> dict:
  """The scheduler config of directory `path` (DDPMScheduler's defaults if it has none)."""
  layout = find_layout(path)
  if layout.scheduler is None:
    log.warning(
      "%s has no scheduler_config.json: assuming DDPMScheduler's defaults (linear betas "
      "1e-4..0.02 over 1000 steps, epsilon prediction)",
      path,
    )
    return {}
  return _read_json(layout.scheduler)


def schedule(path: str) -> Schedule:
  layout = find_layout(path)
  return schedule_from_json(scheduler_json(path), layout.scheduler or path)


def alpha_bar_error(cfg: dict, sde) -> float:
  """Worst relative difference |abar_sde(t_i) - abar_i| / abar_i over the training
  timesteps i, at the bridge's t_i = i / (N - 1)."""
  abar = discrete_alphas_cumprod(cfg)
  n = len(abar)
  t = np.arange(n) / (n - 1)
  alpha, _ = sde.marginal(np.asarray(t, np.float64))
  return float(np.max(np.abs(np.asarray(alpha, np.float64) ** 2 - abar) / abar))


def resolve_config(config) -> None:
  """Sets config.sde from the imported model's scheduler (model.source=diffusers).

  Called once before any work (commands/runner.py); the score model checks the
  result (`check_resolved`), so a path that forgot it fails instead of pairing a
  network with another schedule.
  """
  if config.model.source != "diffusers":
    return
  sched = schedule(config.model.path)
  for k, v in sched.sde_fields().items():  # a locked config takes new values of its fields
    config.sde[k] = type(config.sde[k])(v)
  from vdae.diffusion import sde as sde_lib  # the SDE module imports the schema, not us

  err = alpha_bar_error(scheduler_json(config.model.path), sde_lib.from_config(config.sde))
  log.info(
    "imported %s: %s, sde.kind=%s beta_min=%g beta_max=%g, network timestep t*%g; the "
    "continuous alpha_bar(t) differs from the scheduler's alphas_cumprod by at most %.3g "
    "(relative)",
    config.model.path,
    sched.prediction_type,
    sched.kind,
    sched.beta_min,
    sched.beta_max,
    sched.time_scale,
    err,
  )


def check_resolved(path: str, sde) -> Schedule:
  """The schedule imported from `path`, or a ConfigError if the `sde` group is not it."""
  sched = schedule(path)
  got = {k: sde[k] for k in sched.sde_fields()}
  want = sched.sde_fields()
  if any(got[k] != (type(got[k])(v)) for k, v in want.items()):
    raise ConfigError(
      f"config.sde {got} is not the imported scheduler's {want}; the imported model's SDE "
      "comes from its scheduler (vdae.io.pretrained.resolve_config sets it)"
    )
  return sched


# --- the tensors ----------------------------------------------------------------------
def flax_path(name: str) -> tuple[str, ...]:
  """'down_blocks.0.attentions.1.to_out.0.weight' -> ('down_blocks_0', 'attentions_1',
  'to_out_0', 'weight'): a numeric segment joins the one before it."""
  out: list[str] = []
  for part in name.split("."):
    if part.isdigit() and out:
      out[-1] = f"{out[-1]}_{part}"
    else:
      out.append(part)
  if len(out) >= 2 and out[-2] in _OLD_ATTENTION:
    out[-2] = _OLD_ATTENTION[out[-2]]
  return tuple(out)


def _convert(arr: np.ndarray, leaf: str, target_shape, name: str) -> tuple[str, np.ndarray]:
  """A torch tensor as the Flax leaf it fills: (leaf name, array)."""
  if leaf == "bias":
    return "bias", arr
  if arr.ndim == 4 and len(target_shape) == 4:  # conv [O, I, kh, kw] -> [kh, kw, I, O]
    return "kernel", arr.transpose(2, 3, 1, 0)
  if arr.ndim == 4 and len(target_shape) == 2 and arr.shape[2:] == (1, 1):
    return "kernel", arr[:, :, 0, 0].T  # old checkpoints' 1x1-conv attention projections
  if arr.ndim == 2:  # linear [out, in] -> [in, out]
    return "kernel", arr.T
  if arr.ndim == 1:
    return "scale", arr  # GroupNorm's weight
  raise CheckpointError(f"tensor {name} has an unexpected shape {list(arr.shape)}")


def read_tensors(weights: str) -> dict[str, np.ndarray]:
  from safetensors.numpy import load_file

  try:
    return load_file(weights)
  except Exception as e:  # the package raises its own error types for a bad file
    raise CheckpointError(f"{weights}: not a readable safetensors file ({e})") from e


def to_flax_tree(tensors: dict[str, np.ndarray], spec, where: str) -> dict:
  """The Flax parameter tree of `spec` filled from torch-named `tensors` (float32).

  Every tensor fills exactly one leaf and every leaf is filled, or a
  CheckpointError names what is missing, left over or of the wrong shape.
  """
  abstract = diffusers_unet.init_abstract(spec)
  flat = traverse_util.flatten_dict(abstract)
  filled: dict[tuple[str, ...], np.ndarray] = {}
  unused = []
  for name in sorted(tensors):
    *mod, leaf = flax_path(name)
    candidates = [tuple(mod) + (k,) for k in ("kernel", "scale", "bias")]
    target = next(
      (c for c in candidates if c in flat and (leaf == "bias") == (c[-1] == "bias")), None
    )
    if target is None:
      unused.append(name)
      continue
    key, arr = _convert(np.asarray(tensors[name]), leaf, flat[target].shape, name)
    target = tuple(mod) + (key,)
    if target not in flat:
      unused.append(name)
      continue
    if target in filled:
      raise CheckpointError(f"{where}: tensors {name} and another both map to {'/'.join(target)}")
    if tuple(arr.shape) != tuple(flat[target].shape):
      raise CheckpointError(
        f"{where}: the weights do not match config.json: {name} has shape "
        f"{list(tensors[name].shape)}, the config's network needs {list(flat[target].shape)}"
      )
    filled[target] = arr.astype(np.float32)
  missing = sorted("/".join(k) for k in flat if k not in filled)
  if unused or missing:
    parts = []
    if missing:
      parts.append(f"{len(missing)} parameters have no tensor (first: {missing[0]})")
    if unused:
      parts.append(f"{len(unused)} tensors are not in the network (first: {unused[0]})")
    raise CheckpointError(f"{where}: the weights do not match config.json: {'; '.join(parts)}")
  tree: dict = {}
  for path, arr in filled.items():
    node = tree
    for p in path[:-1]:
      node = node.setdefault(p, {})
    node[path[-1]] = arr
  return tree


_LISTS = (
  "down_blocks",
  "up_blocks",
  "resnets",
  "attentions",
  "downsamplers",
  "upsamplers",
  "to_out",
)


def export_tensors(tree: dict) -> dict[str, np.ndarray]:
  """The inverse of `to_flax_tree`: a Flax UNet2DModel tree as diffusers-named torch
  layouts, so tests and benchmarks can write checkpoints without torch."""
  out = {}
  for keys, leaf in traverse_util.flatten_dict(tree).items():
    parts = []
    for k in keys[:-1]:
      head, _, num = k.rpartition("_")
      parts.append(f"{head}.{num}" if head in _LISTS and num.isdigit() else k)
    arr = np.asarray(leaf, np.float32)
    if keys[-1] == "kernel":
      arr = arr.transpose(3, 2, 0, 1) if arr.ndim == 4 else arr.T
    parts.append("bias" if keys[-1] == "bias" else "weight")
    out[".".join(parts)] = np.ascontiguousarray(arr)
  return out


def write_checkpoint(directory: str, unet_config: dict, tree: dict, scheduler: dict | None = None):
  """A save_pretrained-style directory from a Flax tree (tests, benchmarks)."""
  from safetensors.numpy import save_file

  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, "config.json"), "w") as f:
    json.dump({"_class_name": "UNet2DModel", **unet_config}, f)
  save_file(export_tensors(tree), os.path.join(directory, WEIGHTS))
  if scheduler is not None:
    with open(os.path.join(directory, "scheduler_config.json"), "w") as f:
      json.dump(scheduler, f)


def weights_sha256(path: str) -> str:
  """A hash of the imported weights file (recorded by stage 2, checked on resume)."""
  h = hashlib.sha256()
  with open(find_layout(path).weights, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()


def check_image_shape(spec, image_shape, path: str) -> None:
  """DataError if the data's images are not the size and channels the model takes."""
  h, w, c = image_shape
  if (h, w) != (spec.sample_size, spec.sample_size) or c != spec.in_channels:
    raise DataError(
      f"the imported model {path} takes {spec.sample_size}x{spec.sample_size} images with "
      f"{spec.in_channels} channels (sample_size, in_channels), but the data has {h}x{w} with "
      f"{c}; set data.image_size or use data of that shape"
    )
  if spec.out_channels != spec.in_channels:
    raise CheckpointError(
      f"{path}: out_channels={spec.out_channels} differs from in_channels={spec.in_channels}; a "
      "noise predictor's output has the image's channels"
    )


def load_params(path: str, mesh, param_rules, image_shape) -> tuple[dict, dict]:
  """(params, meta) of the model imported from `path`, sharded on `mesh` by
  `param_rules` (mesh.param_rules) like stage 1's.

  params is the tree of vdae.diffusion.score's wrapper ({"unet": ...}); meta names
  the source and the weights' hash."""
  layout = find_layout(path)
  spec = unet_spec(path)
  check_image_shape(spec, tuple(image_shape), path)
  tensors = read_tensors(layout.weights)
  dtypes = sorted({str(a.dtype) for a in tensors.values()})
  if dtypes != ["float32"]:
    log.info("%s: %s weights upcast to float32", layout.weights, "/".join(dtypes))
  tree = {"unet": to_flax_tree(tensors, spec, layout.weights)}
  shapes = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), tree)
  shardings = sharding.state_shardings({"ema_params": shapes}, mesh, param_rules)
  params = jax.tree_util.tree_map(
    lambda a, s: jax.make_array_from_callback(a.shape, s, lambda i, a=a: a[i]),
    tree,
    shardings["ema_params"],
  )
  return params, {
    "score_source": f"diffusers:{os.path.abspath(path)}",
    "score_sha256": weights_sha256(path),
  }
