"""--mode=evaluate end to end on the tiny config over the shapes source (8x8 colour
images with known factors): every stage of the table trained for a few steps in a
module-scoped workdir, then the harness over every autoencoder, factor metrics
included."""

import json
import logging
import os

import numpy as np
import pytest

from vdae.commands import evaluate
from vdae.training import stages

pytestmark = pytest.mark.slow

# Every autoencoder gets the same keys from the harness.
PER_PROTOCOL = (
  "l2",
  "l2_ci_low",
  "l2_ci_high",
  "mse",
  "psnr",
  "class_accuracy",
  "recon_fid",
  "time_per_image",
)
PER_MODEL = (
  "rate_nats",
  "neg_elbo_bits_per_dim",
  "linear_probe_accuracy",
  "sample_fid",
  "sample_fid_ci_low",
  "sample_fid_ci_high",
  "sample_fid_num",
)
REFINED = ("refined_vae", "sdedit_vae")
KEYS = (
  {
    f"{ae}/{p}/{k}"
    for ae in ("vdae", "vae")
    for p in ("sample", "mode", "mean")
    for k in PER_PROTOCOL
  }
  | {f"vdae/inverted/{k}" for k in PER_PROTOCOL}  # the VDAE can invert; the VAE cannot
  | {f"{ae}/{k}" for ae in ("vdae", "vae") for k in PER_MODEL}
  # The refined and the SDEdit VAE: the VAE's code, decoded through the refiner or the
  # score model (no ELBO of their own).
  | {f"{ae}/{p}/{k}" for ae in REFINED for p in ("sample", "mode", "mean") for k in PER_PROTOCOL}
  | {f"{ae}/{k}" for ae in REFINED for k in PER_MODEL if k != "neg_elbo_bits_per_dim"}
  # The VDAE's sample_fid comes from its learned latent prior; N(0, I) beside it.
  | {f"vdae/sample_fid_standard_normal{k}" for k in ("", "_ci_low", "_ci_high", "_num")}
  | {"vdae/time_per_image_em", "vdae/time_per_image_pc", "vdae/time_per_image_ode"}
  | {"vdae/neg_elbo_bits_per_dim_converged", "vdae/neg_elbo_solver_steps"}
  | {"score_model/bits_per_dim", "score_model/bits_per_dim_converged"}
  | {"score_model/bpd_solver_steps"}
  | {"classifier_test_accuracy", "fid_floor_train_vs_test"}
  # shapes has factors: per-factor probes, DCI and MIG for every autoencoder.
  | {
    f"{ae}/{k}"
    for ae in ("vdae", "vae", *REFINED)
    for k in (
      "factors/shape/accuracy",
      *(f"factors/{f}/r2" for f in ("hue", "background", "x", "y", "scale", "rotation")),
      "dci/disentanglement",
      "dci/completeness",
      "dci/informativeness",
      "mig",
    )
  }
)
SHAPE = (8, 8, 3)


def tiny_config():
  """The tiny config over 8x8 shapes."""
  from configs import tiny

  config = tiny.get_config()
  config.data.source, config.data.image_size = "shapes", SHAPE[0]
  config.data.shapes_num_train, config.data.shapes_num_test = 512, 64
  # One level, no attention (procs.MINI's shape): cheaper to compile, same code paths.
  config.model.channel_mults = config.encoder.channel_mults = (1,)
  config.model.num_res_blocks, config.model.attn_resolutions = 1, ()
  # The 4-step encoder's conditional score is stiff: its PF-ODE likelihood (neg ELBO)
  # took ~1.4k adaptive steps at the default tolerance (thousands compiled without
  # XLA's backend optimisations, minutes of the suite). The tests check the key's
  # wiring, not its value: a loose tolerance, and room under the step cap (NaN past it).
  config.eval.bpd_rtol = config.eval.bpd_atol = 1e-2
  config.eval.bpd_max_steps = 8000
  config.eval.elbo_num_images = 1
  return config


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
  """Every stage of the table on the tiny config, then --mode=evaluate, in this process
  (compiled as every test is, tests/conftest.py); the tests read the workdir and compare
  what evaluate returned with what it wrote."""
  config, workdir = tiny_config(), str(tmp_path_factory.mktemp("tiny_eval"))
  for name in stages.STAGES:
    stages.train(name, config, workdir)
  return config, workdir, evaluate.evaluate(config, workdir)


@pytest.mark.timeout(900)  # includes the module fixture: every stage trained, then evaluated
def test_evaluate_writes_every_metric(tiny_run):
  _, workdir, metrics = tiny_run
  assert set(metrics) == KEYS
  with open(os.path.join(workdir, "eval", "metrics.json")) as f:
    written = json.load(f)
  assert written == pytest.approx(metrics)
  assert all(isinstance(v, float) and np.isfinite(v) for v in written.values()), written
  for ae in ("vdae", "vae"):
    for k in ("mean/class_accuracy", "linear_probe_accuracy"):
      assert 0.0 <= written[f"{ae}/{k}"] <= 1.0
    assert written[f"{ae}/rate_nats"] > 0 and written[f"{ae}/sample_fid"] >= 0
    assert written[f"{ae}/sample_fid_num"] == 16.0
    for p in ("sample", "mode", "mean"):
      assert (
        written[f"{ae}/{p}/l2_ci_low"] <= written[f"{ae}/{p}/l2"] <= written[f"{ae}/{p}/l2_ci_high"]
      )
  # The VAE's mean is its mode (exact); one draw of p(x | z) adds its noise.
  assert written["vae/mean/mse"] == written["vae/mode/mse"] < written["vae/sample/mse"]
  assert written["score_model/bits_per_dim"] > 0
  for ae in ("vdae", "vae", *REFINED):
    assert 0.0 <= written[f"{ae}/factors/shape/accuracy"] <= 1.0
    for k in ("disentanglement", "completeness", "informativeness"):
      assert 0.0 <= written[f"{ae}/dci/{k}"] <= 1.0
  # The refined and SDEdit VAEs decode the VAE's code: the same codes, the same probes.
  for ae in REFINED:
    assert written[f"{ae}/dci/completeness"] == pytest.approx(written["vae/dci/completeness"])
  for ae in REFINED:  # the VAE's code, so the VAE's rate
    assert written[f"{ae}/rate_nats"] == pytest.approx(written["vae/rate_nats"])
  for png in ("comparison", "vdae_reconstructions", "vdae_samples", "vae_samples", "loss_curves"):
    assert os.path.exists(os.path.join(workdir, "eval", f"{png}.png")), png
  events = os.listdir(os.path.join(workdir, "tensorboard", "eval"))
  assert any(e.startswith("events.out.tfevents") for e in events)


@pytest.mark.timeout(300)
def test_a_second_evaluation_reuses_every_kept_part(tiny_run, caplog):
  """Everything was kept (eval/parts/): the same command again solves and decodes
  nothing and writes the same metrics, time_per_image included (they are kept too)."""
  config, workdir, metrics = tiny_run
  with caplog.at_level(logging.INFO):
    again = evaluate.evaluate(config, workdir)
  assert again == metrics
  said = [r.getMessage() for r in caplog.records]
  kept = [m for m in said if "kept from an earlier run" in m]
  assert len(kept) == 4, said
  assert not [m for m in said if "solver steps" in m or " decodes: " in m], said


@pytest.mark.timeout(300)
def test_edit_writes_a_labelled_grid_and_specificity_per_factor(tiny_run):
  """--mode=edit on the shapes run: a grid per factor (the VDAE's rows, then the
  VAE's: an original and its edits each), every key in edit/metrics.json and in
  TensorBoard, specificity in [0, 1]."""
  from PIL import Image

  from tests.support import procs
  from vdae.commands import edit
  from vdae.data import shapes

  config, workdir, _ = tiny_run
  config = config.copy_and_resolve_references()
  config.edit.num_images, config.edit.num_train = 2, 256
  out = edit.edit(config, workdir)
  with open(os.path.join(out, "metrics.json")) as f:
    got = json.load(f)
  want = {
    f"{m}/edit/{n}/{k}"
    for m in ("vdae", "vae")
    for n in shapes.NAMES
    for k in ("effect", "leakage", "specificity")
  }
  assert set(got) == want
  assert all(0.0 <= got[k] <= 1.0 for k in want if k.endswith("specificity"))
  x = stages.context(config, workdir).splits["test"].arrays(2)["image"]
  for name in shapes.NAMES:
    with np.load(os.path.join(out, f"{name}.npz")) as f:
      images = f["images"]
    columns = 1 + (len(shapes.SHAPES) if name == "shape" else len(config.edit.steps))
    rows = images.reshape(4, columns, *SHAPE)  # 2 models x 2 images, one row each
    for block in (rows[:2], rows[2:]):  # each model's rows start with the originals
      np.testing.assert_array_equal(block[:, 0], x)
    png = Image.open(os.path.join(out, f"{name}.png"))
    assert png.size[0] >= columns * SHAPE[1] and png.size[1] > 4 * SHAPE[0]
  tags = procs.read_scalars(os.path.join(workdir, "tensorboard", "edit"), "edit/vdae/edit/x/effect")
  assert tags, "no edit scalars in TensorBoard"


@pytest.mark.timeout(300)
def test_stage2_gain_reads_the_losses_and_the_factors_of_the_run(tiny_run):
  """benchmarks.stage2_gain on the shapes run: the losses with and without the code
  per t (finite, and not equal: the correction reaches them); the factors' probes
  from x_t read nothing at t = 1, where x_t is noise, and the background (a global
  colour) well at t = eps; the judge's errors on x0_hat(x_t), with and without the code.
  """
  from vdae.autoencoders import registry
  from vdae.benchmarks import stage2_gain
  from vdae.data import shapes
  from vdae.parallel import sharding

  config, workdir, _ = tiny_run
  ctx = stages.context(config, workdir)
  train = ctx.splits["train"]
  x0 = np.asarray(train.arrays(512)["image"], np.float32)
  ae = registry.load_vdae(config, workdir, sharding.make_mesh(config.mesh), SHAPE)
  ts = np.array([config.sde.eps, 0.5, 1.0])
  rows = stage2_gain.per_t_losses(ae, config, x0[:64], ts, seed=0, batch=32)
  assert np.all(np.isfinite(rows["uncond"])) and np.all(np.isfinite(rows["cond"]))
  assert rows["uncond"] != rows["cond"]  # the code's correction reaches the loss
  read = stage2_gain.readable_from_xt(config, x0, train.factors.take(np.arange(512)), ts, seed=0)
  assert set(read) == set(shapes.NAMES)
  for name, kind in zip(shapes.NAMES, shapes.KINDS):
    if kind != "categorical":
      assert read[name][2] < 0.15, (name, read[name])  # x_1 is noise: nothing to read
  assert read["background"][0] > 0.8, read["background"]
  from vdae.evaluation import classifier

  model, params, meta = classifier.load_or_train(config.eval, config.data, workdir, ctx.splits)
  judge = classifier.make_factor_predict(model, params, classifier.codec_from_meta(meta))
  f = train.factors.take(np.arange(32))
  judged = stage2_gain.judge_reads(ae, config, x0[:32], f, ts, judge, seed=0, batch=16)
  for which in ("uncond", "cond"):
    assert set(judged[which]) == set(shapes.NAMES)
    assert all(
      len(v) == len(ts) and np.all(np.isfinite(v)) and min(v) >= 0 for v in judged[which].values()
    )


@pytest.mark.timeout(60)
def test_evaluate_event_file_has_eval_scalars(tiny_run):
  from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

  _, workdir, metrics = tiny_run
  acc = EventAccumulator(os.path.join(workdir, "tensorboard", "eval"))
  acc.Reload()
  tags = set(acc.Tags()["scalars"])
  assert {f"eval/{k}" for k in metrics} <= tags


@pytest.mark.timeout(300)
def test_the_latent_prior_resumes_to_the_uninterrupted_runs_parameters(tiny_run, tmp_path):
  """A copy of the run with the prior's last checkpoint gone (what a kill after the
  step-2 save leaves) resumes from step 2 and ends on the same parameters; and a
  prior whose encoder has since trained further is refused."""
  import shutil

  from tests.support import procs
  from vdae.io.errors import CheckpointError
  from vdae.parallel import sharding

  config, workdir, _ = tiny_run
  n = config.prior.num_steps
  copy = str(tmp_path / "wd")
  shutil.copytree(workdir, copy, ignore=shutil.ignore_patterns("eval", "sweep"))
  shutil.rmtree(os.path.join(copy, "prior", "checkpoints", str(n)))
  assert stages.trained_step("prior", config, copy) == 2
  stages.train("prior", config, copy)
  ck = lambda wd: os.path.join(wd, "prior", "checkpoints")
  procs.assert_trees_close(procs.read_state(ck(workdir), n), procs.read_state(ck(copy), n))
  more = config.copy_and_resolve_references()
  more.stage2.num_steps += 2
  stages.train("stage2", more, copy)
  with pytest.raises(CheckpointError, match="latent prior was trained on the codes"):
    stages.load_prior(more, copy, sharding.make_mesh(more.mesh), SHAPE)


@pytest.mark.timeout(180)
def test_encode_with_invert_writes_each_images_x_T(tiny_run):
  """--mode=encode with sampling.invert=true adds x_T, and decoding the code from it is
  the `inverted` reconstruction of the image at that index."""
  from vdae.autoencoders import registry
  from vdae.commands import encode
  from vdae.parallel import sharding

  config, workdir, _ = tiny_run
  config = config.copy_and_resolve_references()
  config.sampling.invert = True
  with np.load(encode.encode(config, workdir)) as f:
    d = dict(f)
  assert d["x_T"].shape == (len(d["mu"]), *SHAPE)
  ctx = stages.context(config, workdir)
  ae = registry.load_vdae(config, workdir, sharding.make_mesh(config.mesh), SHAPE)
  # encode walks the split in order, in batches of stage2.batch_size (16): the first
  # batch again, at the same size, so the same compiled programs run.
  n = config.stage2.batch_size
  x = ctx.splits[config.stage2.encode_split].arrays(n)["image"]
  np.testing.assert_allclose(ae.invert(x, d["mu"][:n]), d["x_T"][:n], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(
    ae.decode_inverted(d["mu"][:n], d["x_T"][:n]),
    ae.reconstruct_inverted(x, d["mu"][:n]),
    rtol=1e-5,
    atol=1e-5,
  )
  assert not np.allclose(d["x_T"][:n], x, atol=0.1)  # x_1, not the image


@pytest.mark.timeout(60)
def test_vae_checkpoint_with_another_decoder_fails_clearly(tiny_run):
  from vdae.io.errors import CheckpointError
  from vdae.parallel import sharding

  config, workdir, _ = tiny_run
  other = config.copy_and_resolve_references()
  other.vae.decoder_channels = 16
  with pytest.raises(CheckpointError, match="vae.decoder_channels"):
    stages.load_stage("vae", other, workdir, sharding.make_mesh(other.mesh), SHAPE)


@pytest.mark.timeout(900)
def test_sweep_trains_and_evaluates_each_point_and_resumes(tiny_run):
  """Two betas per model on the tiny run's score model: one record per point with the
  harness's keys, the figure and the table; a second call redoes nothing."""
  from vdae.commands import sweep

  config, workdir, _ = tiny_run
  config = config.copy_and_resolve_references()
  config.sweep.vdae_betas = config.sweep.vae_betas = (0.5, 2.0)
  config.eval.protocols = ("mode",)
  # The sweep's wiring, not the harness's numbers (test_evaluate_writes_every_metric has
  # every key): no stiff ELBO solve and no timing decodes at each point.
  config.eval.elbo_num_images, config.eval.timing_methods = 0, ("",)
  config.sweep.models = ("vdae", "vae", "sdedit_vae", "refined_vae")
  points = sweep.sweep(config, workdir)
  assert [(p["model"], p["beta"]) for p in points] == [
    (m, b) for m in config.sweep.models for b in (0.5, 2.0)
  ]
  for p in points:
    assert p["rate_nats"] > 0 and np.isfinite(p["mode/l2"]) and "sample/l2" not in p
    # Each VDAE point samples from the latent prior it trained (sweep.train_prior).
    assert ("sample_fid_standard_normal" in p) == (p["model"] == "vdae"), p
  # Each point trained with its own beta: same seed, same init, same data order, so
  # an ignored override would make the two points' rates bit-identical. (Which way the
  # rate moves after 4 Adam steps is not a property worth asserting.)
  for model in ("vdae", "vae"):
    a, b = (p["rate_nats"] for p in points if p["model"] == model)
    assert a != b, (model, a, b)
  # The enhancements decode the code of the VAE point they share a directory with.
  for model in ("sdedit_vae", "refined_vae"):
    for beta in (0.5, 2.0):
      rate = [p["rate_nats"] for p in points if p["beta"] == beta and p["model"] in (model, "vae")]
      assert rate[0] == rate[1], (model, beta, rate)
  vae_point = os.path.join(workdir, "sweep", "vae_beta2_seed0")
  assert os.path.exists(os.path.join(vae_point, "refiner", "checkpoints"))
  kept = json.load(open(os.path.join(vae_point, "eval", "metrics.json")))
  assert {k.split("/")[0] for k in kept} >= {"vae", "sdedit_vae", "refined_vae"}
  at = json.load(open(os.path.join(vae_point, "eval", "evaluated_at.json")))
  steps = config.vae.num_steps
  assert at == {
    "vae": {"vae": steps},
    "sdedit_vae": {"vae": steps},
    "refined_vae": {"vae": steps, "refiner": config.refiner.num_steps},
  }
  out = os.path.join(workdir, "sweep")
  for name in ("points.json", "judge.json", "table.md", "rate_distortion.png", "factors_rate.png"):
    assert os.path.exists(os.path.join(out, name)), name
  assert os.path.exists(os.path.join(out, "vdae_beta0.5_seed0", "stage2", "checkpoints"))
  again = sweep.sweep(config, workdir)
  assert again == points
