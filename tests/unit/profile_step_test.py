"""The profile reduction: XLA thunk events summed per op and kind, the step's module picked."""

import gzip
import json

import pytest

from vdae.benchmarks import profile_step


def _event(module, op, dur):
  return {"ph": "X", "name": op, "dur": dur, "args": {"hlo_module": module, "hlo_op": op}}


def test_top_ops_and_kinds_of_the_busiest_module(tmp_path):
  events = [
    _event("jit_step", "convolution.1", 30.0),
    _event("jit_step", "convolution.2", 10.0),
    _event("jit_step", "fusion.7", 35.0),
    _event("jit_step", "copy.3", 25.0),
    _event("jit_add", "add.1", 50.0),  # an eager op: not the step
    {"ph": "X", "name": "$python frame", "dur": 1e6, "args": {}},  # host events are not ops
  ]
  path = tmp_path / "vm.trace.json.gz"
  with gzip.open(path, "wt") as f:
    json.dump({"traceEvents": events}, f)
  hlo = (
    '%convolution.1 = f32[2] convolution(), metadata={op_type="conv" '
    'op_name="jit(f)/UNet/ResBlock_0/Conv_0/conv_general_dilated"}'
  )
  s = profile_step.summarise(str(path), top=2, sources=profile_step.op_sources(hlo))
  assert s["module"] == "jit_step" and s["op_ms"] == pytest.approx(0.1)
  assert [k for k, *_ in s["top_kinds"]] == ["convolution", "fusion"]
  assert s["top_kinds"][0][2] == pytest.approx(0.4)
  assert s["top_ops"][0][0] == "fusion.7" and s["top_ops"][1][0] == "convolution.1"
  assert s["top_ops"][1][3] == "ResBlock_0/Conv_0/conv_general_dilated"
