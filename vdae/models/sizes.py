"""Which image sizes each network can take, checked before any work starts.

Every level of the U-Net and of the encoder after the first halves the side
(a stride-2 conv, rounding up), so a side below 2^(levels - 1) would be
"downsampled" to one pixel before the coarsest level and the levels above it
see nothing real. The U-Net's upsampling resizes to the skip connection's
shape, so odd sides round-trip; the VAE decoder doubles from a fixed coarsest
map, so its side must divide by 2^(levels - 1).
"""

from __future__ import annotations

from vdae.io.errors import DataError


def _min_side(levels: int) -> int:
  return 2 ** max(levels - 1, 0)


def check_downsampling(image_shape, channel_mults, field: str, what: str) -> None:
  """DataError if the images' sides are below what `field`'s levels downsample."""
  h, w = image_shape[0], image_shape[1]
  need = _min_side(len(channel_mults))
  if min(h, w) < need:
    raise DataError(
      f"images of {h}x{w} are too small for the {what}: {field}={tuple(channel_mults)} has "
      f"{len(channel_mults)} levels, so each side must be at least {need}. Use fewer levels "
      "or larger images (data.image_size resizes folder / array_record sources)."
    )


def check_score_model(model, image_shape) -> None:
  """The config's `model` group against the images."""
  check_downsampling(image_shape, model.channel_mults, "model.channel_mults", "score U-Net")


def check_encoder(encoder, image_shape) -> None:
  """The config's `encoder` group (the VDAE's and the VAE's) against the images."""
  check_downsampling(image_shape, encoder.channel_mults, "encoder.channel_mults", "encoder")


def check_refiner(refiner, image_shape) -> None:
  """The config's `refiner` group against the images."""
  check_downsampling(image_shape, refiner.channel_mults, "refiner.channel_mults", "refiner")


def check_vae_decoder(vae, image_shape) -> None:
  """The config's `vae` group against the images: its decoder doubles a fixed map."""
  mults = tuple(vae.decoder_channel_mults)
  scale = _min_side(len(mults))
  h, w = image_shape[0], image_shape[1]
  if h % scale or w % scale:
    raise DataError(
      f"images of {h}x{w} cannot be reproduced by the VAE decoder: "
      f"vae.decoder_channel_mults={mults} has {len(mults)} levels, so each side must divide "
      f"by {scale}. Use fewer decoder levels or resize the images (data.image_size)."
    )
