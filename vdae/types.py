"""Type aliases shared across the package, defined once.

Shapes: x is [B, H, W, C] (images) or [B, D] (flattened); t is [B]; codes z
are [B, L].
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

Array = jax.Array
Params = Any  # a pytree of arrays
Key = jax.Array  # a typed PRNG key

# eps_fn(x [B,H,W,C], t [B], temb [B, temb_dim] or None) -> eps [B,H,W,C]
EpsFn = Callable[..., Array]
# score_fn(x [B, ...], t [B]) -> score [B, ...]
ScoreFn = Callable[[Array, Array], Array]
# encode_fn(x [B, ...], t [B]) -> (mu [B, L], log_var [B, L])
EncodeFn = Callable[[Array, Array], tuple[Array, Array]]
# corr_fn(x [B, ...], t [B]) -> c [B, ...]: the latent-correction score
CorrFn = Callable[[Array, Array], Array]
# loss_fn(params, batch, key, frozen) -> (loss [], aux {name: []})
LossFn = Callable[[Params, dict, Key, Any], tuple[Array, dict]]
