"""Figures of where the Perceiver's latents look: its first cross-attention over the pixels.

Built on `matplotlib.figure.Figure` (Agg canvas), so it never touches pyplot's global state or a
display.
"""

import numpy as np
from matplotlib.figure import Figure


def plot_attention_maps(images_BHWC, maps_BNMS, path, num_latents: int = 8,
                        num_images: int = 4):
  """Writes a PNG: one row per image, the image then the maps of its first `num_latents` latents.

  Args:
    images_BHWC: the images (uint8 or float; each is rescaled to [0, 1] for display).
    maps_BNMS: `perceiver.cross_attention_maps` output, [B, heads, M, S]; heads are averaged.
      S = h·w tokens on a grid of the image's aspect ratio (h = H for pixels), shown as h x w.
    path: where the PNG goes.
  """
  images = np.asarray(images_BHWC, np.float32)
  maps_BMS = np.asarray(maps_BNMS, np.float32).mean(axis=1)
  b, height, width, channels = images.shape
  grid_h = round((maps_BMS.shape[-1] * height / width) ** 0.5)
  grid_w = maps_BMS.shape[-1] // grid_h
  rows, cols = min(b, num_images), 1 + min(num_latents, maps_BMS.shape[1])
  fig = Figure(figsize=(1.5 * cols, 1.5 * rows))
  axes = fig.subplots(rows, cols, squeeze=False)
  for r in range(rows):
    image = images[r] - images[r].min()
    image = image / max(float(image.max()), 1e-8)
    axes[r, 0].imshow(image[..., 0] if channels == 1 else image, cmap="gray")
    axes[r, 0].set_title("input", fontsize=8)
    for j in range(cols - 1):
      axes[r, j + 1].imshow(maps_BMS[r, j].reshape(grid_h, grid_w), cmap="viridis")
      axes[r, j + 1].set_title(f"latent {j}", fontsize=8)
  for ax in axes.flat:
    ax.set_axis_off()
  fig.tight_layout()
  fig.savefig(path, dpi=100)
