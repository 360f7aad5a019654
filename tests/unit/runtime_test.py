"""runtime.cpu_kernels: the XLA flag that turns YNNPACK's fusions off reaches XLA_FLAGS
only when nobody chose otherwise and the jaxlib knows it."""

import jaxlib.version
import pytest

from vdae.parallel import runtime

FLAG = "--xla_cpu_experimental_ynn_fusion_type="


@pytest.fixture
def jaxlib_version(monkeypatch):
  def set_to(v: str):
    monkeypatch.setattr(jaxlib.version, "__version_info__", tuple(map(int, v.split("."))))

  set_to("0.10.2")
  return set_to


def test_off_by_default_keeps_the_flags_already_there(monkeypatch, jaxlib_version):
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
  runtime.cpu_kernels(ynnpack=False)
  assert runtime.os.environ["XLA_FLAGS"].split() == [
    "--xla_force_host_platform_device_count=4",
    FLAG,
  ]
  runtime.cpu_kernels(ynnpack=False)  # twice (a driver, then the runner): added once
  assert runtime.os.environ["XLA_FLAGS"].count("ynn") == 1


def test_no_xla_flags_at_all(monkeypatch, jaxlib_version):
  monkeypatch.delenv("XLA_FLAGS", raising=False)
  jaxlib_version("0.12.0.1")
  runtime.cpu_kernels(ynnpack=False)
  assert runtime.os.environ["XLA_FLAGS"] == FLAG


@pytest.mark.parametrize(
  "ynnpack, flags, version",
  [
    (True, "", "0.10.2"),  # asked for: XLA's default stays
    (False, "--xla_cpu_experimental_ynn_fusion_type=individual_dot", "0.10.2"),  # the user's
    (False, "", "0.9.2"),  # an older jaxlib would abort on a flag it does not know
    (False, "", "0.7.0"),
  ],
)
def test_left_alone(monkeypatch, jaxlib_version, ynnpack, flags, version):
  monkeypatch.setenv("XLA_FLAGS", flags)
  jaxlib_version(version)
  runtime.cpu_kernels(ynnpack=ynnpack)
  assert runtime.os.environ["XLA_FLAGS"] == flags


@pytest.mark.parametrize("env, added", [(None, True), ("1", False), ("0", True)])
def test_default_cpu_kernels_follows_the_config_and_vdae_cpu_ynnpack(
  monkeypatch, jaxlib_version, env, added
):
  """What the benchmarks and tests/conftest.py call: runtime.cpu_ynnpack's default (false),
  unless VDAE_CPU_YNNPACK=1 keeps YNNPACK's fusions."""
  monkeypatch.setenv("XLA_FLAGS", "")
  if env is None:
    monkeypatch.delenv("VDAE_CPU_YNNPACK", raising=False)
  else:
    monkeypatch.setenv("VDAE_CPU_YNNPACK", env)
  runtime.default_cpu_kernels()
  assert (FLAG in runtime.os.environ["XLA_FLAGS"]) is added
