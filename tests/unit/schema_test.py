"""The config schema: each field's rule declared on the field, read by the check and the code."""

import copy

import pytest

from configs import base, cifar10, digits, mnist, shapes, tiny
from vdae import schema
from vdae.diffusion import sde as sde_lib
from vdae.io.errors import ConfigError


def test_every_stage_group_has_the_same_fields():
  c = base.get_config()
  for g in schema.STAGE_GROUPS:
    assert set(schema.STAGE_FIELDS) <= set(c[g]), g


@pytest.mark.parametrize("mod", [base, digits, mnist, cifar10, shapes, tiny])
def test_shipped_configs_pass_the_check(mod):
  schema.check(mod.get_config())
  if mod is shapes:
    schema.check(shapes.get_config("accelerator"))


def test_choices_are_declared_on_the_field_and_read_by_the_check_and_by_the_code():
  c = tiny.get_config()
  kind = dict(schema.fields(c))["sde.kind"]
  assert kind.choices == tuple(sde_lib.SDES) == ("vp", "subvp", "ve", "vp_cosine")
  c.sde.kind = "vpp"  # an override keeps the field's declaration
  c.sampling.loop = "while"
  with pytest.raises(ConfigError) as e:
    schema.check(c)
  assert "sde.kind='vpp' is not one of vp, subvp, ve, vp_cosine" in str(e.value)
  assert "sampling.loop='while' is not one of auto, scan, python" in str(e.value)
  with pytest.raises(ConfigError, match="sde.kind='vpp' is not one of vp, subvp, ve, vp_cosine"):
    sde_lib.make("vpp")
  schema.check(copy.deepcopy(tiny.get_config()))  # a deep copy keeps the declarations
  with pytest.raises(ValueError, match="no field declarations"):
    schema.check(tiny.get_config().copy_and_resolve_references())  # this one does not


def test_a_field_declares_its_type_and_its_default_must_obey_it():
  with pytest.raises(TypeError):
    tiny.get_config().stage1.num_steps = "many"
  with pytest.raises(ValueError, match="default 'x' is not among"):
    schema.field("x", choices=("a", "b"))


def test_check_lists_every_problem():
  c = tiny.get_config()
  c.stage2.num_steps = 0
  c.vae.lr = -1.0
  c.stage1.lr, c.stage2.beta_kl, c.stage2.weight_cap = 0.0, -0.5, 0.5
  c.model.temb_dim = 7
  with pytest.raises(ConfigError) as e:
    schema.check(c)
  msg = str(e.value)
  assert "stage2.num_steps=0 must be positive" in msg
  assert "vae.lr=-1.0 must be positive" in msg
  assert "stage1.lr=0.0 must be positive" in msg
  assert "stage2.beta_kl=-0.5 must be >= 0" in msg
  assert "stage2.weight_cap=0.5 must be >= 1 (it caps a weight >= 1)" in msg
  assert "model.temb_dim=7 must be even" in msg
