"""Batches through Grain, for training and for evaluation.

Training: an endless stream that visits every item of the split once per
epoch, each epoch in a fresh seeded permutation; the global batch at step k
holds positions [k B, (k + 1) B) of it whatever the process count (so 1 x 4
devices and 2 x 2 see the same data), and process p reads block p of it. Grain
runs it with one element per local batch (index -> rows -> items, stacked,
flipped), prefetched by its reader threads, its iterator state checkpointed
with the model: Grain's per-element shuffle / repeat / batch cost ~40 us an
item on a 2-core CPU, 10 ms a 256-batch, a third of the latent prior's step,
where one element a batch costs its items' reads alone.

Evaluation: the split (or its first `limit` items) in order, in batches of one
fixed size, the last one padded by `pad_batch` with a `valid` mask, so every
batch runs through one compiled program and metrics drop the padding.
`map_batched` applies a function to arrays that do not come from a split
(decoded images, codes) the same way. Every padded batch goes through it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator

import grain
import numpy as np

from vdae.data.sources import Split
from vdae.io.errors import ConfigError


@functools.lru_cache(maxsize=4)
def _permutation(n: int, seed: int, epoch: int) -> np.ndarray:
  return np.random.default_rng([seed, epoch]).permutation(n)


class _LocalBatch:
  """Local batch j of the stream (a pure function of j, so Grain may prefetch
  it on any thread): the rows at positions [j b, (j + 1) b)."""

  def __init__(self, split: Split, local: int, seed: int, flip: bool):
    self.split, self.local, self.seed, self.flip = split, local, seed, flip

  def __call__(self, j: int) -> dict[str, np.ndarray]:
    n, b = len(self.split), self.local
    epoch, within = np.divmod(np.arange(j * b, (j + 1) * b), n)
    rows = np.concatenate(
      [_permutation(n, self.seed, int(e))[within[epoch == e]] for e in np.unique(epoch)]
    )
    items = [self.split[int(i)] for i in rows]
    batch = {k: np.stack([it[k] for it in items]) for k in items[0]}
    mirror = np.zeros(b, bool)
    if self.flip:
      mirror = np.random.default_rng([self.seed + 1, j]).random(b) < 0.5
      batch["image"][mirror] = batch["image"][mirror][:, :, ::-1]
    batch["flipped"] = mirror  # which rows are mirrored (the latent prior's lookup reads it)
    return batch


def train_dataset(
  split: Split,
  data_cfg,
  global_batch: int,
  process_index: int,
  process_count: int,
) -> grain.IterDataset:
  """This process's endless stream of local batches {'image': [b, H, W, C], 'label',
  'index' (source row), 'flipped' (mirrored rows) [b]}.

  b = global_batch / process_count; batch k of process p is block p of the
  k-th global batch of the shuffled stream.
  """
  if global_batch % process_count:
    raise ConfigError(
      f"batch size {global_batch} is not divisible by the process count {process_count}."
    )
  local = global_batch // process_count
  make = _LocalBatch(split, local, int(data_cfg.shuffle_seed), bool(data_cfg.random_flip))
  ds = grain.MapDataset.range(_ENDLESS)[process_index::process_count].map(make)
  it_ds = ds.to_iter_dataset(
    grain.ReadOptions(num_threads=4, prefetch_buffer_size=max(int(data_cfg.prefetch), 4))
  )
  if data_cfg.worker_count > 0:
    it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=data_cfg.worker_count))
  return it_ds


_ENDLESS = 2**62  # local batches: more than any run reads


def pad_batch(batch: dict[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
  """A batch of n <= size rows padded to `size` by repeating its last row.

  Adds `valid` [size] bool: True for the n real rows.
  """
  n = len(next(iter(batch.values())))
  if not 0 < n <= size:
    raise ValueError(f"cannot pad a batch of {n} rows to {size}")
  out = {k: np.concatenate([v, np.repeat(v[-1:], size - n, 0)]) for k, v in batch.items()}
  out["valid"] = np.arange(size) < n
  return out


def eval_batches(split: Split, batch: int, limit: int | None = None) -> Iterator[dict]:
  """The split (or its first `limit` items) in order, as padded numpy batches."""
  n = len(split) if limit is None else min(limit, len(split))
  ds = grain.MapDataset.source(split)[:n].batch(batch, drop_remainder=False)
  return (pad_batch(b, batch) for b in ds)


def map_batched(fn: Callable, arrays: np.ndarray | tuple, batch: int):
  """fn over arrays [N, ...] (one array or a tuple) in padded batches of `batch`.

  fn takes the batch's arrays as arguments and returns an array or a tuple of
  arrays with a leading batch axis (numpy or jax, possibly multi-process: the
  result is read with `to_host`); so does this, without the padding.
  """
  from vdae.parallel.sharding import to_host

  arrays = arrays if isinstance(arrays, tuple) else (arrays,)
  n = len(arrays[0])
  outs = []
  for lo in range(0, n, batch):
    b = pad_batch({i: np.asarray(a[lo : lo + batch]) for i, a in enumerate(arrays)}, batch)
    k = int(b["valid"].sum())
    out = fn(*(b[i] for i in range(len(arrays))))
    out = out if isinstance(out, tuple) else (out,)
    outs.append([to_host(o)[:k] for o in out])
  cat = tuple(np.concatenate(parts) for parts in zip(*outs, strict=True))
  return cat[0] if len(cat) == 1 else cat
