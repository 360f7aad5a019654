"""tests/fixtures/workdir: a workdir of every stage and the judge, as the networks of the
commit that wrote it saved them, and what each network computed on fixed inputs
(`outputs.npz`). tests/integration/old_workdir_test.py reads it with today's code, so a
change to a network's parameter tree or to what it computes shows there first, not in a
user's workdir. Writing it again with later code would hide exactly that: do so only for
a deliberate format change, and say in BUILD.md what then happens to older workdirs.

python -m tests.support.workdir_fixture tests/fixtures/workdir
"""

from __future__ import annotations

import os
import shutil
import sys

import numpy as np

from tests.support import procs

SHAPE = (8, 8, 1)
STAGES = ("stage1", "stage2", "prior", "vae", "refiner")
STEPS = 4
# A few large steps of each stage, so that every parameter (zero-initialised output layers
# included) has moved and shows in the outputs; one checkpoint kept: the workdir is a few MB.
FIELDS = {
  **{f"{s}.num_steps": STEPS for s in STAGES},
  **{f"{s}.checkpoint_every": STEPS for s in STAGES},
  **{f"{s}.warmup_steps": 0 for s in STAGES},
  **{f"{s}.lr": 1e-2 for s in STAGES},
  "loop.keep_checkpoints": 1,
  "eval.classifier_steps": 4,
}


def config():
  """procs.MINI's tiny config with FIELDS: the config the fixture was trained with."""
  from configs import tiny

  return procs.set_fields(procs.mini(tiny.get_config()), FIELDS)


def inputs(latent_dim: int) -> dict[str, np.ndarray]:
  """Fixed inputs: images in [-1, 1], two times, two codes."""
  return {
    "x": np.linspace(-1.0, 1.0, 2 * int(np.prod(SHAPE)), dtype=np.float32).reshape(2, *SHAPE),
    "t": np.array([0.3, 0.7], np.float32),
    "z": np.linspace(-1.5, 1.5, 2 * latent_dim, dtype=np.float32).reshape(2, latent_dim),
  }


def outputs(cfg, workdir: str) -> dict[str, np.ndarray]:
  """What each network saved in `workdir` computes on `inputs`."""
  import jax.numpy as jnp

  from vdae.autoencoders import refined_vae
  from vdae.autoencoders import vae as vae_lib
  from vdae.data import sources
  from vdae.diffusion import score
  from vdae.evaluation import classifier
  from vdae.latent import prior as prior_lib
  from vdae.models import encoder as encoder_lib
  from vdae.parallel import sharding
  from vdae.training import stages

  mesh = sharding.make_mesh(cfg.mesh)
  load = lambda name: stages.load_stage(name, cfg, workdir, mesh, SHAPE)[0]
  inp = inputs(cfg.encoder.latent_dim)
  x, t, z = (jnp.asarray(inp[k]) for k in ("x", "t", "z"))
  out = {}
  net = score.model_from_config(cfg.model, cfg.sde)
  out["score_model"] = net.apply(load("stage1"), x, t)
  enc = encoder_lib.from_config(cfg.encoder, cfg.model, cfg.sde)
  out["encoder_mu"], out["encoder_log_var"] = enc.apply(load("stage2"), x, t)
  vae = vae_lib.model_from_config(cfg, SHAPE)
  vae_params = load("vae")
  out["vae_mu"], out["vae_log_var"] = vae.encode(vae_params, x)
  out["vae_decoded"] = vae.decode(vae_params, z)
  refiner = refined_vae.network(cfg.refiner, cfg.model, SHAPE[-1])
  u_and_x_bar = jnp.concatenate([x, x[::-1]], axis=-1)
  out["refiner"] = refiner.apply(load("refiner"), u_and_x_bar, t)
  prior = prior_lib.model_from_config(cfg.prior, cfg.encoder.latent_dim, cfg.sde.time_scale)
  out["prior"] = prior.apply(load("prior"), z, t)
  splits = sources.load_splits(cfg.data)
  judge, judge_params, _ = classifier.load_or_train(cfg.eval, cfg.data, workdir, splits)
  out["judge_logits"], out["judge_features"], _ = judge.apply(judge_params, x)
  return {k: np.asarray(v) for k, v in out.items()}


def write(out_dir: str) -> None:
  """Trains every stage and the judge into out_dir, keeps what a workdir keeps of them
  (no TensorBoard runs), and records the networks' outputs."""
  from vdae.data import sources
  from vdae.evaluation import classifier
  from vdae.training import stages

  if os.path.exists(out_dir):
    sys.exit(f"{out_dir} exists: remove it first if you mean to replace the fixture")
  cfg = config()
  for name in STAGES:
    stages.train(name, cfg, out_dir)
  classifier.load_or_train(cfg.eval, cfg.data, out_dir, sources.load_splits(cfg.data))
  shutil.rmtree(os.path.join(out_dir, "tensorboard"), ignore_errors=True)
  np.savez(os.path.join(out_dir, "outputs.npz"), **outputs(cfg, out_dir))


if __name__ == "__main__":
  write(sys.argv[1])
