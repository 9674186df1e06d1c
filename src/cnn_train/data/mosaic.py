"""Mosaics: 2×2 grids of single-label images, labelled with the set of classes they show.

`data=fashion_mnist_multilabel` builds them from the real Fashion-MNIST images, so a multi-label benchmark
exists offline: each mosaic holds 1 to 4 items (as many equally likely) on randomly chosen tiles, the other
tiles black like the images' own background. Items are drawn without replacement from reshuffled passes over
the source images, so every source image is used about equally often. The same generator seed always gives
the same mosaics.
"""

from __future__ import annotations

import torch

GRID = 2  # tiles per side: a mosaic is GRID × the source side (56 px from Fashion-MNIST's 28)
TILES = GRID * GRID


def _item_stream(n_sources: int, count: int, generator: torch.Generator) -> torch.Tensor:
    """`count` source indices: whole shuffled passes over the sources, one after another."""
    passes = -(-count // n_sources)
    return torch.cat([torch.randperm(n_sources, generator=generator) for _ in range(passes)])[:count]


def layout(n_sources: int, count: int, generator: torch.Generator) -> torch.Tensor:
    """count × TILES source indices, tiles in row-major order; `n_sources` marks an empty tile."""
    items = torch.randint(1, TILES + 1, (count,), generator=generator)
    positions = torch.rand(count, TILES, generator=generator).argsort(1)  # which tiles the items take
    filled = torch.arange(TILES) < items[:, None]
    picks = torch.full((count, TILES), n_sources)
    picks[filled] = _item_stream(n_sources, int(filled.sum()), generator)
    return torch.full((count, TILES), n_sources).scatter_(1, positions, picks)


def compose(
    images: torch.Tensor, labels: torch.Tensor, num_classes: int, tiles: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 N×C×(GRID·H)×(GRID·W) mosaics and their N×K float32 label sets, from `layout`'s tile indices."""
    _, c, h, w = images.shape
    blank = torch.zeros(1, c, h, w, dtype=images.dtype)
    grid = torch.cat([images, blank])[tiles]  # count × TILES × C × H × W
    mosaics = grid.view(-1, GRID, GRID, c, h, w).permute(0, 3, 1, 4, 2, 5).reshape(-1, c, GRID * h, GRID * w)
    one_hot = torch.cat(
        [torch.nn.functional.one_hot(labels, num_classes).float(), torch.zeros(1, num_classes)]
    )
    return mosaics.contiguous(), one_hot[tiles].amax(1)
