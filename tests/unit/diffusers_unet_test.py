"""The Flax UNet2DModel against diffusers: committed fixtures (no torch) and, when
torch + diffusers are importable, live random models.

The fixtures (tests/fixtures/diffusers/, made by its make_fixtures.py) are two
small random UNet2DModels that together cover every supported block type, both
timestep-embedding conventions, both downsample paddings, non-default group
counts and head sizes, plus a DDPM trained on digits and saved in float16.
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest

from vdae.io import pretrained
from vdae.io.errors import CheckpointError
from vdae.models import diffusers_unet

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fixtures", "diffusers")
MODELS = {"unet_a": "unet_a", "unet_b": "unet_b", "digits_ddpm": "digits_ddpm"}


def _load(name: str):
  path = os.path.join(FIXTURES, MODELS[name])
  spec = pretrained.unet_spec(path)
  tensors = pretrained.read_tensors(pretrained.find_layout(path).weights)
  return spec, tensors


def _apply(spec, tree, x, t):
  return np.asarray(diffusers_unet.network_of(spec).apply(tree, x, t))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_matches_diffusers_outputs(name):
  ref = np.load(os.path.join(FIXTURES, "parity.npz"))
  spec, tensors = _load(name)
  tree = pretrained.to_flax_tree(tensors, spec, name)
  out = _apply(spec, tree, ref[f"{name}/x"], ref[f"{name}/t"])
  err = np.max(np.abs(out - ref[f"{name}/out"]))
  assert err <= 1e-4, f"{name}: max abs error {err:.3g} against diffusers"
  assert np.max(np.abs(ref[f"{name}/out"])) > 0.1  # a reference that is not ~0


def test_fixtures_cover_the_supported_configurations():
  specs = [_load(n)[0] for n in ("unet_a", "unet_b")]
  kinds = {k for s in specs for k in s.down_block_types + s.up_block_types}
  assert kinds == set(diffusers_unet.DOWN_BLOCKS + diffusers_unet.UP_BLOCKS)
  assert {s.flip_sin_to_cos for s in specs} == {True, False}
  assert {s.downsample_padding for s in specs} == {0, 1}
  assert {s.attention_head_dim is None for s in specs} == {True, False}
  assert any(s.norm_num_groups != 32 for s in specs)


def test_old_attention_tensor_names_map_to_the_same_network():
  ref = np.load(os.path.join(FIXTURES, "parity.npz"))
  spec, tensors = _load("unet_a")
  old = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
  renamed = {}
  for k, v in tensors.items():
    for new, was in old.items():
      k = k.replace(f".{new}.", f".{was}.")
    renamed[k] = v
  assert renamed.keys() != tensors.keys()
  out = _apply(
    spec, pretrained.to_flax_tree(renamed, spec, "old"), ref["unet_a/x"], ref["unet_a/t"]
  )
  assert np.max(np.abs(out - ref["unet_a/out"])) <= 1e-4


def test_the_ddpm_cifar10_config_has_its_parameter_count_and_state_dict():
  d = os.path.join(FIXTURES, "ddpm_cifar10_32")
  with open(os.path.join(d, "config.json")) as f:
    spec = diffusers_unet.UNetSpec.from_json(json.load(f), "ddpm-cifar10-32")
  abstract = diffusers_unet.init_abstract(spec)
  assert diffusers_unet.num_params(abstract) == 35_746_307
  assert len(jax.tree_util.tree_leaves(abstract)) == 328
  with open(os.path.join(d, "state_dict_shapes.json")) as f:
    shapes = json.load(f)
  # Every tensor of diffusers' state dict fills one parameter (zeros: only names
  # and shapes matter here); to_flax_tree raises on anything missing or left over.
  tensors = {k: np.zeros(v, np.float32) for k, v in shapes.items()}
  tree = pretrained.to_flax_tree(tensors, spec, "ddpm-cifar10-32")
  assert diffusers_unet.num_params(tree) == 35_746_307


def _config(**changes) -> dict:
  with open(os.path.join(FIXTURES, "unet_a", "config.json")) as f:
    cfg = json.load(f)
  cfg.update(changes)
  return cfg


@pytest.mark.parametrize(
  "changes, named",
  [
    ({"down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"]}, "down_block_types[0]"),
    ({"up_block_types": ["UpBlock2D", "AttnSkipUpBlock2D"]}, "up_block_types[1]"),
    ({"_class_name": "UNet2DConditionModel"}, "_class_name"),
    ({"time_embedding_type": "fourier"}, "time_embedding_type='fourier'"),
    ({"class_embed_type": "timestep"}, "class_embed_type"),
    ({"num_class_embeds": 10}, "num_class_embeds"),
    ({"cross_attention_dim": 768}, "cross_attention_dim"),
    ({"act_fn": "tanh"}, "act_fn"),
    ({"upsample_type": "resnet"}, "upsample_type"),
  ],
)
def test_unsupported_configurations_are_refused_naming_the_field(changes, named):
  with pytest.raises(CheckpointError, match=None) as e:
    diffusers_unet.UNetSpec.from_json(_config(**changes), "cfg.json")
  msg = str(e.value)
  assert named in msg and "\n" not in msg, msg


def test_weights_that_do_not_fit_the_config_are_refused():
  spec, tensors = _load("unet_a")
  name = next(k for k in sorted(tensors) if k.endswith("conv1.weight"))
  missing = {k: v for k, v in tensors.items() if k != name}
  with pytest.raises(CheckpointError, match="1 parameters have no tensor"):
    pretrained.to_flax_tree(missing, spec, "x")
  extra = {**tensors, "extra_block.weight": np.zeros((3,), np.float32)}
  with pytest.raises(CheckpointError, match="not in the network .first: extra_block.weight"):
    pretrained.to_flax_tree(extra, spec, "x")
  wrong = {**tensors, name: np.zeros((1, *tensors[name].shape[1:]), np.float32)}
  with pytest.raises(CheckpointError, match=f"{name} has shape"):
    pretrained.to_flax_tree(wrong, spec, "x")


def test_live_against_diffusers(tmp_path):
  """Random UNet2DModels built by diffusers itself (only where torch is installed)."""
  torch = pytest.importorskip("torch")
  diffusers = pytest.importorskip("diffusers")
  torch.manual_seed(0)
  model = diffusers.UNet2DModel(
    sample_size=8,
    in_channels=2,
    out_channels=2,
    block_out_channels=(8, 16),
    down_block_types=("AttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "AttnUpBlock2D"),
    layers_per_block=1,
    norm_num_groups=4,
    attention_head_dim=4,
    freq_shift=1,
    flip_sin_to_cos=False,
  ).eval()
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.05 * torch.randn_like(p))
  model.save_pretrained(tmp_path)
  x = np.random.default_rng(0).standard_normal((2, 8, 8, 2)).astype(np.float32)
  t = np.array([3.0, 750.5], np.float32)
  with torch.no_grad():
    ref = model(torch.from_numpy(x).permute(0, 3, 1, 2), torch.from_numpy(t)).sample
  ref = ref.permute(0, 2, 3, 1).numpy()
  spec = pretrained.unet_spec(str(tmp_path))
  tensors = pretrained.read_tensors(pretrained.find_layout(str(tmp_path)).weights)
  out = _apply(spec, pretrained.to_flax_tree(tensors, spec, "live"), x, t)
  assert np.max(np.abs(out - ref)) <= 1e-4
