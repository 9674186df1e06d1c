"""Groups of identical and of nearly identical images, from per-image hashes, without an all-pairs loop.

Exact duplicates share a content hash. Near duplicate candidates are images whose 64-bit perceptual hashes
differ in at most `threshold` bits; they are found by multi-index hashing: cut the hash into threshold+1
bands, and by the pigeonhole principle two hashes that close agree exactly on at least one band. Only images
sharing a band value are compared (numpy popcount over those candidate pairs), so 70k images take seconds,
not hours; the candidates are then confirmed on small grey thumbnails.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

HASH_BITS = 64
ROWS_PER_CHUNK = 2048  # bounds the popcount matrix of one large bucket to chunk × bucket entries
PAIRS_PER_CHUNK = 65536  # bounds the thumbnail differences held at once


def exact_groups(keys: Sequence[bytes]) -> list[list[int]]:
    """Indices of images with the same content key, for every key held by two or more images."""
    members: dict[bytes, list[int]] = {}
    for i, key in enumerate(keys):
        members.setdefault(key, []).append(i)
    return [group for group in members.values() if len(group) > 1]


def _bands(threshold: int) -> list[tuple[int, int]]:
    """(shift, width) of threshold+1 bands covering the 64 bits as evenly as possible."""
    count = threshold + 1
    edges = np.linspace(0, HASH_BITS, count + 1).round().astype(int)
    return [(int(lo), int(hi - lo)) for lo, hi in itertools.pairwise(edges)]


def _popcount(x: np.ndarray) -> np.ndarray:
    """Set bits of every uint64 (numpy ≥ 2 has a kernel for it; older numpy unpacks the bytes)."""
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(x)
    return np.unpackbits(x.view(np.uint8), axis=-1).reshape(*x.shape, 64).sum(-1)


def _close_pairs_in(bucket: np.ndarray, hashes: np.ndarray, threshold: int) -> np.ndarray:
    """(i, j) index pairs, i < j, within one bucket whose hashes differ in at most `threshold` bits."""
    found = []
    values = hashes[bucket]
    for start in range(0, len(bucket), ROWS_PER_CHUNK):
        rows = values[start : start + ROWS_PER_CHUNK]
        close = _popcount(rows[:, None] ^ values[None, :]) <= threshold
        r, c = np.nonzero(close)
        keep = c > r + start  # each unordered pair once, no self pairs
        found.append(np.stack([bucket[r[keep] + start], bucket[c[keep]]], axis=1))
    return np.concatenate(found) if found else np.empty((0, 2), dtype=np.int64)


def near_pairs(hashes: np.ndarray, threshold: int) -> np.ndarray:
    """Every pair of distinct entries of `hashes` (uint64) at Hamming distance ≤ threshold, as an (n, 2) array.

    Pairs found through more than one band appear more than once; connected components do not mind.
    """
    if not 0 <= threshold < HASH_BITS:
        raise ValueError(f"threshold {threshold} must lie in 0..{HASH_BITS - 1}")
    hashes = np.asarray(hashes, dtype=np.uint64)
    found = [np.empty((0, 2), dtype=np.int64)]
    for shift, width in _bands(threshold):
        band = (hashes >> np.uint64(shift)) & np.uint64((1 << width) - 1)
        order = np.argsort(band, kind="stable")
        starts = np.flatnonzero(np.r_[True, band[order][1:] != band[order][:-1], True])
        for lo, hi in itertools.pairwise(starts):
            if hi - lo > 1:
                found.append(_close_pairs_in(order[lo:hi], hashes, threshold))
    return np.concatenate(found)


def _similar(pairs: np.ndarray, thumbs: np.ndarray, max_diff: float) -> np.ndarray:
    """The pairs whose grey thumbnails differ by at most `max_diff` per pixel on average (0–255 scale)."""
    keep = np.zeros(len(pairs), dtype=bool)
    for start in range(0, len(pairs), PAIRS_PER_CHUNK):
        a, b = pairs[start : start + PAIRS_PER_CHUNK].T
        diff = np.abs(thumbs[a].astype(np.int16) - thumbs[b].astype(np.int16)).mean(axis=(1, 2))
        keep[start : start + PAIRS_PER_CHUNK] = diff <= max_diff
    return pairs[keep]


def near_groups(
    hashes: np.ndarray, thumbs: np.ndarray, keys: Sequence[bytes], threshold: int, max_diff: float
) -> list[list[int]]:
    """Connected groups of near duplicates that are not all one exact image.

    A pair is near when its perceptual hashes differ in at most `threshold` bits (cheap, found by band
    hashing) and its grey thumbnails (N×h×w uint8) differ by at most `max_diff` on average: on small
    images such as Fashion-MNIST's, many different garments share a hash, and the thumbnails tell them apart.
    """
    pairs = np.unique(np.sort(near_pairs(hashes, threshold), axis=1), axis=0)
    pairs = _similar(pairs, thumbs, max_diff)
    n = len(keys)
    graph = coo_matrix((np.ones(len(pairs), dtype=np.int8), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    members: dict[int, list[int]] = {}
    for i, label in enumerate(labels.tolist()):
        members.setdefault(label, []).append(i)
    return [g for g in members.values() if len(g) > 1 and len({keys[i] for i in g}) > 1]
