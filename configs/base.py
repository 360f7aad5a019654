"""Base config: every field a run can set, grouped by concept.

Experiment files import this, override what differs, and return the result.
Every field is overridable on the command line, e.g.

  python -m vdae.main --config=configs/digits.py --workdir=runs/d \
      --config.stage1.num_steps=200 --config.stage1.lr=1e-3

The config is locked: a misspelt key or a value of the wrong type is an error
that names it. A constrained field declares its rule where it is set (`field`: its
choices, or its bounds); vdae/schema.py's up-front check reads those declarations.
Choices the code dispatches on are the code's own (a sampler is one of
samplers.METHODS), so each is written once.

Groups: data, model (score network), sde, encoder (stage-2 network), vae (the
baseline's networks), one training group per trained stage with the same
fields (stage1 = score model, stage2 = encoder, prior = latent prior, vae), loop (what every
stage's loop shares), optim, sampling, eval, mesh, runtime.
"""

import ml_collections

from vdae.data import sources
from vdae.diffusion import likelihood, losses, samplers, score
from vdae.diffusion import sde as sde_lib
from vdae.kernels import fused_step
from vdae.latent import objective
from vdae.models import embedding
from vdae.schema import field
from vdae.training import state


def _stage(num_steps: int, batch_size: int, lr: float, image_every: int):
  """The fields every trained stage's group has (vdae/training/stages/ reads them)."""
  g = ml_collections.ConfigDict()
  g.num_steps = field(num_steps, positive=True)
  g.batch_size = field(batch_size, positive=True)  # global, over all processes and devices
  g.lr = field(lr, positive=True)  # peak learning rate after warmup
  g.warmup_steps = field(200, at_least=0)
  g.log_every = field(50, positive=True)  # scalars to TensorBoard
  g.image_every = field(image_every, at_least=0)  # picture grid to TensorBoard (0 = never)
  g.checkpoint_every = field(500, positive=True)
  return g


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0

  # Data: images are scaled to [-1, 1]; size and channels are read from the
  # data, and the networks are built for them.
  c.data = d = ml_collections.ConfigDict()
  d.source = field("digits", choices=tuple(sources.SOURCES))
  d.path = ""  # file, folder or glob for npz / folder / array_record
  d.test_fraction = 0.15  # held-out split for sources without one
  d.image_size = 0  # folder / array_record: resize to this (0 = keep); shapes: its size (0 = 32)
  d.shapes_num_train = 20000  # shapes: generated training images (the test split never changes)
  d.shapes_num_test = 2000
  d.random_flip = False
  d.shuffle_seed = 0
  d.worker_count = 0  # Grain worker processes (0 = in-process)
  d.prefetch = 8  # batches Grain's reader threads keep ready

  # Score network (stage 1). source=diffusers imports a pretrained DDPM instead of
  # training one: path is a diffusers save_pretrained directory or hub snapshot
  # (vdae/io/pretrained.py); its scheduler then sets the sde group, and the fields
  # below other than dtype are unused.
  c.model = m = ml_collections.ConfigDict()
  m.source = field("native", choices=score.SOURCES)
  m.path = ""
  m.channels = 64
  m.channel_mults = (1, 2)
  m.num_res_blocks = 2
  m.attn_resolutions = (4,)
  m.dropout = 0.0
  m.groups = 8
  m.embedding = field("sinusoidal", choices=embedding.KINDS)
  m.temb_dim = 64  # raw time features; the MLP widens them to 4 * channels
  m.fourier_scale = 16.0
  # Compute dtype (params stay float32).
  m.dtype = field("float32", choices=("float32", "bfloat16"))

  # SDE.
  c.sde = s = ml_collections.ConfigDict()
  # vp_cosine: the cosine schedule over sde.timesteps steps (imported DDPMs' squaredcos_cap_v2)
  s.kind = field("vp", choices=tuple(sde_lib.SDES))
  s.beta_min = 0.1
  s.beta_max = 20.0
  s.sigma_min = 0.01
  s.sigma_max = 50.0
  s.eps = 1e-3  # smallest training / sampling time
  s.time_scale = 1000.0  # t is embedded as t * time_scale
  s.timesteps = 1000  # vp_cosine: the discrete schedule's N

  # Stage 1: score-model pretraining (denoising score matching).
  c.stage1 = t = _stage(num_steps=3000, batch_size=128, lr=2e-3, image_every=1000)
  t.likelihood_weighting = False

  # Time-dependent encoder q_phi(z | x_t, t) (stage 2).
  c.encoder = e = ml_collections.ConfigDict()
  e.latent_dim = field(16, positive=True)
  e.channels = 32
  e.channel_mults = (1, 2)
  e.num_res_blocks = 1
  e.groups = 8
  e.logvar_term = True  # keep log v_t in log q (the official code drops it)

  # Stage 2: the encoder trained on the frozen score model.
  c.stage2 = s2 = _stage(num_steps=3000, batch_size=128, lr=1e-3, image_every=1000)
  s2.stage1_workdir = ""  # stage-1 checkpoints ("" = this run's --workdir)
  # eps (official) | score (sigma(t)^2-weighted score space)
  s2.loss = field("eps", choices=objective.FORMS)
  s2.beta_kl = field(0.01, at_least=0)
  # uniform | stratified (low-discrepancy)
  s2.time_sampling = field("uniform", choices=losses.TIME_SAMPLING)
  # none: the official unweighted eps loss; likelihood: times g^2 / sigma^2 with
  # importance-sampled t, an ELBO in nats whose beta_kl means what the VAE's does;
  # truncated_snr: times min(max(1, sigma^2 / alpha^2), weight_cap), the residual in
  # pixels wherever noise outweighs signal (vdae.diffusion.losses).
  s2.weighting = field("none", choices=objective.WEIGHTINGS)
  s2.weight_cap = field(100.0, at_least=1, why="it caps a weight >= 1")
  s2.encode_split = field("test", choices=("train", "test"))  # encode/reconstruct

  # The learned latent prior (--mode=train_prior, vdae/latent/prior.py): a residual MLP
  # diffusion model over the encoder's codes z ~ q(z | x), normalised per dimension.
  c.prior = pr = _stage(num_steps=4000, batch_size=256, lr=1e-3, image_every=0)
  pr.width = 512
  pr.depth = 4  # residual blocks
  pr.temb_dim = 64
  # Its sampler (the image model's samplers, on [N, L] codes).
  pr.sample_method = field("pc", choices=samplers.METHODS)
  pr.sample_num_steps = 200

  # Gaussian-likelihood VAE baseline (--mode=train_vae): the stage-2 encoder
  # architecture at t = 0, a mirrored decoder, the same latent size and data.
  c.vae = va = _stage(num_steps=3000, batch_size=128, lr=1e-3, image_every=1000)
  va.beta_kl = field(1.0, at_least=0)
  va.decoder_channels = 32
  va.decoder_channel_mults = (2, 1)  # from the coarsest level up
  va.decoder_num_res_blocks = 1
  va.obs_log_var = -4.6  # log sigma^2 of p(x | z) (-4.6: sigma ~ 0.1 on [-1, 1] data)
  va.learn_obs_var = True  # one learned log-variance, initialised at obs_log_var

  # The VAE + diffusion refiner (--mode=train_refiner, autoencoders/refined_vae.py): a
  # U-Net noise predictor conditioned on the frozen VAE's output x_bar (as input
  # channels), trained under IR-SDE's mean-reverting SDE towards x_bar
  # (diffusion/mean_reverting.py), which decoding runs backwards from x_bar + lam * noise.
  c.refiner = rf = _stage(num_steps=1500, batch_size=128, lr=1e-3, image_every=0)
  rf.lam = field(
    0.5, positive=True
  )  # stationary std around x_bar, in [-1, 1] pixel units (above the VAE's error)
  rf.schedule = field("linear", choices=("linear", "cosine"))  # of theta(t)
  rf.theta_min = 0.05  # linear: theta(t) = theta_min + t (theta_max - theta_min)
  rf.theta_max = 10.0
  rf.eps = 1e-3
  rf.channels = 32
  rf.channel_mults = (1, 2)
  rf.num_res_blocks = 1
  rf.attn_resolutions = ()
  rf.sample_method = field("dpmpp_2m_sde", choices=samplers.METHODS)
  rf.sample_num_steps = field(30, positive=True)
  # false: the frozen, trained VAE's outputs (two stages). true: one stage trains a VAE of
  # its own (the vae group's shape and beta_kl) with the refiner on -ELBO + DSM loss, the
  # DSM gradient stopped at x_bar or let through it into the VAE (x_bar_gradient).
  rf.joint = False
  rf.x_bar_gradient = field("stop", choices=("stop", "through"))

  # SDEdit on the VAE's output (autoencoders/sdedit_vae.py; no training): x_bar perturbed
  # by the score model's SDE to t0, then its reverse process (sampling.method) from t0.
  c.sdedit = sd = ml_collections.ConfigDict()
  sd.t0 = 0.3
  sd.num_steps = field(20, positive=True)

  # What every stage's training loop shares.
  c.loop = lp = ml_collections.ConfigDict()
  lp.ema_decay = 0.999
  lp.keep_checkpoints = field(3, positive=True)
  lp.async_checkpointing = True
  lp.on_nonfinite = field("stop", choices=("stop", "skip"))
  # (first, last): a jax.profiler trace of those steps of every stage, written where
  # TensorBoard's profile plugin finds it (WORKDIR/tensorboard/<stage>/plugins/profile).
  # () = off. Skip the first step: it compiles.
  lp.profile_steps = ()

  # Optimiser shape (AdamW), shared by every stage; each stage sets its own lr.
  c.optim = o = ml_collections.ConfigDict()
  o.weight_decay = 0.0
  o.b1 = 0.9
  o.b2 = 0.999
  o.grad_clip = 1.0
  o.schedule = field("cosine", choices=state.SCHEDULES)  # after warmup

  # Sampling / decoding.
  c.sampling = sp = ml_collections.ConfigDict()
  # em / pc: reverse SDE (+ Langevin corrector); ode: PF ODE by Euler; heun: EDM on the
  # Karras grid (2 calls a step); dpmpp_2m: DPM-Solver++(2M) on the log-SNR grid;
  # dpmpp_2m_sde: its reverse-SDE form (1 call a step each). vdae/diffusion/samplers.py's
  # SOLVERS declares them.
  sp.method = field("pc", choices=samplers.METHODS)
  sp.num_steps = field(200, positive=True)
  sp.snr = 0.16  # Langevin corrector signal-to-noise ratio
  sp.corrector_steps = 1
  sp.num_samples = field(64, positive=True)
  # What --mode=sample draws: "score" = the score model alone (stage 1),
  # "encoder" = prior codes (sampling.latent_prior) decoded with the latent correction,
  # "auto" = the encoder's when stage 2 has a checkpoint.
  sp.source = field("auto", choices=("auto", "score", "encoder"))
  # Where the VDAE's prior codes come from (--mode=sample, evaluation's sample_fid):
  # learned = the latent prior (--mode=train_prior), standard_normal = N(0, I),
  # auto = learned when it has a checkpoint.
  sp.latent_prior = field("auto", choices=("auto", "learned", "standard_normal"))
  sp.denoise = True  # final Tweedie denoising step at t = eps
  # --mode=reconstruct decodes from each image's own x_1 (the PF ODE run forwards
  # with the conditional score at its code: Diff-AE's inversion) instead of fresh
  # noise; evaluation reports that protocol as `inverted`. Both use this solver.
  sp.invert = False
  sp.invert_method = field("dpmpp_2m", choices=("dpmpp_2m", "heun"))
  sp.invert_num_steps = 50
  sp.use_ema = True
  # Fused step (see vdae/kernels): auto = Pallas on GPU/TPU, reference on CPU.
  sp.kernel = field("auto", choices=fused_step.IMPLS)
  # auto = python on CPU, scan elsewhere (see diffusion/samplers.compile_sampler).
  sp.loop = field("auto", choices=samplers.LOOPS)

  # Evaluation (--mode=evaluate) on the held-out test split: metrics to
  # WORKDIR/eval/metrics.json and TensorBoard. Sizes keep digits at ~2 min on CPU.
  c.eval = ev = ml_collections.ConfigDict()
  ev.num_test = 64  # test images for the reconstruction metrics (0 = whole split)
  ev.num_samples = 1000  # prior samples decoded for sample_fid (sampling.latent_prior's codes)
  ev.batch_size = field(
    64, positive=True
  )  # decoding batch (the timings are per image at this batch)
  # Decode protocols (vdae/evaluation/harness.py): sample = one stochastic decode,
  # mode = the deterministic decode, mean = the average of mean_decodes samples.
  # inverted = decoded from the image's own PF-ODE noise (the VDAE).
  ev.protocols = ("sample", "mode", "mean", "inverted")
  ev.mean_decodes = 4
  # The VDAE's mode: a deterministic solver of the PF ODE.
  ev.mode_method = field("heun", choices=("heun", "ode", "dpmpp_2m"))
  ev.mode_num_steps = 30  # heun: 2 network calls a step
  ev.bootstrap_resamples = 1000  # 95% intervals on L2 and FID (0 = none)
  ev.timing_methods = ("em", "pc", "ode")  # vdae/time_per_image_<method> ("" entries skipped)
  ev.bpd_num_images = 16  # test images for bits_per_dim (0 = skip it)
  ev.elbo_num_images = 16  # test images for the VDAE's neg_elbo_bits_per_dim (0 = skip it)
  ev.bpd_solver = field("tsit5", choices=tuple(likelihood.SOLVERS))  # diffrax, adaptive
  ev.bpd_rtol = 1e-3  # digits: 5e-4 bits/dim from 1e-5, at a sixth of the solver steps
  ev.bpd_atol = 1e-3
  # The solve's step budget (accepted + rejected steps a batch): past it the value is NaN
  # and its _converged share says so, instead of an unbounded solve. Trained models take
  # 13-19 (digits and shapes at these tolerances); a 20-step encoder's stiff ODE took 2000.
  ev.bpd_max_steps = field(100, positive=True)
  # Solver steps per compiled call: control comes back to Python (SIGTERM, progress lines)
  # between pieces, which carry the solver's state on (the same steps as one solve).
  ev.bpd_piece_steps = field(4, positive=True)
  ev.exact_trace_max_dim = 1024  # exact divergence up to this D, Hutchinson above
  ev.hutchinson_probes = 1  # Rademacher probes per solve when D is larger
  ev.data_levels = 0  # pixel levels of the raw data (0 = by source: digits 17, else 256)
  ev.dequantize = True  # uniform dequantisation: bits_per_dim bounds the discrete NLL
  ev.classifier_steps = 1000  # evaluation CNN, trained once per workdir and cached
  ev.classifier_lr = 2e-3
  ev.classifier_channels = 32
  ev.classifier_features = 32  # penultimate width: the Fréchet-distance feature space
  ev.classifier_seed = 0
  ev.probe_max_iter = 2000  # logistic-regression linear probe on encoder means

  # --mode=sweep (vdae/commands/sweep.py): each model trained and evaluated at
  # each beta_kl and seed; stage 1 is shared. SDEdit and the refiner decode the
  # VAE's code: they sweep vae_betas, in the VAE point's directory.
  c.sweep = sw = ml_collections.ConfigDict()
  sw.models = ("vdae", "vae", "sdedit_vae", "refined_vae")
  # Separate grids: the same beta buys different rates from a diffusion decoder
  # and a Gaussian one; the comparison is between points at matched rate.
  sw.vdae_betas = (0.1, 0.3, 1.0)
  sw.vae_betas = (0.3, 1.0, 3.0)
  sw.seeds = (0,)
  sw.match_tolerance = 0.1  # rates within 10% count as matched
  sw.train_prior = True  # each VDAE point trains its latent prior (its sample_fid uses it)

  # --mode=edit (vdae/commands/edit.py), for data with factors: test codes moved
  # along each factor's probe direction, decoded, and read back by the judge.
  c.edit = e = ml_collections.ConfigDict()
  e.models = ("vdae", "vae")
  e.num_images = 6  # test images, one row each per model
  e.steps = (-2.0, -1.0, 0.0, 1.0, 2.0)  # in factor sds (categorical factors: each class)
  e.num_train = 4000  # train codes the edit directions are fit on

  # Device mesh and parameter layout. An axis of size -1 takes the remaining
  # devices. Rules map a regex over the parameter path to a layout:
  # "fsdp" shards the largest dimension divisible by the fsdp axis size,
  # "replicate" keeps a full copy on every device.
  c.mesh = ms = ml_collections.ConfigDict()
  ms.data = -1
  ms.fsdp = 1
  ms.param_rules = ((".*", "fsdp"),)

  # Multi-process runtime (see vdae/parallel/runtime.py); empty = single
  # process, or detected from the TPU VM environment.
  c.runtime = r = ml_collections.ConfigDict()
  r.coordinator_address = ""
  r.num_processes = 0
  r.process_id = -1
  r.local_device_ids = ""
  # One run per workdir (vdae/io/workdir_lock.py): a lock whose holder's pid is gone
  # (same host) or whose heartbeat is older than this is taken over with a warning.
  r.lock_stale_seconds = 120.0
  r.force_unlock = False  # take the lock whatever holds it (a holder you know is gone)
  # JAX's persistent compilation cache: a rerun (any mode, any workdir) loads what an
  # earlier run compiled instead of compiling it again. "auto": $JAX_COMPILATION_CACHE_DIR
  # if set, else ~/.cache/vdae/jax ($XDG_CACHE_HOME honoured); "none": off; else a path.
  r.compile_cache = "auto"
  r.compile_cache_min_seconds = 0.2  # programs that compile faster are not worth a file
  # XLA:CPU's YNNPACK fusions for dots and convolutions (jaxlib >= 0.10's default). Off:
  # XLA's own kernels, which train the digits U-Net's small convolutions 1.2-1.8x faster
  # (docs/performance.md, "CPU kernels"). XLA_FLAGS naming
  # xla_cpu_experimental_ynn_fusion_type wins.
  r.cpu_ynnpack = False

  return c
