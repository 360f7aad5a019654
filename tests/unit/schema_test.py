"""The config schema: choices declared once, read by the check and the code."""

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


def test_choices_are_read_by_the_check_and_by_the_code():
  assert schema.choices("sde.kind") == ("vp", "subvp", "ve", "vp_cosine")
  c = tiny.get_config()
  c.sde.kind = "vpp"
  c.sampling.loop = "while"
  with pytest.raises(
    ConfigError, match="sde.kind='vpp' is not one of vp, subvp, ve, vp_cosine.*sampling.loop"
  ):
    schema.check(c)
  with pytest.raises(ConfigError, match="sde.kind='vpp' is not one of vp, subvp, ve, vp_cosine"):
    sde_lib.make("vpp")


def test_check_lists_every_problem():
  c = tiny.get_config()
  c.stage2.num_steps = 0
  c.vae.lr = -1.0
  c.model.temb_dim = 7
  with pytest.raises(ConfigError) as e:
    schema.check(c)
  msg = str(e.value)
  assert "stage2.num_steps=0 must be positive" in msg
  assert "vae.lr=-1.0 must be positive" in msg
  assert "model.temb_dim=7 must be even" in msg
