"""Poisson image editing (Pérez et al., 2003) on a rectangle, solved exactly with a sine transform.

Used instead of cv2.seamlessClone: OpenCV 5.0.0's seamlessClone alternates between two different
results for identical inputs on consecutive calls (one of them shifted, changing pixels outside the
mask), which breaks both determinism and the outside-the-mask invariant. The equation is the same:
inside the rectangle the result has the donor's gradients, on its border it equals the target.
"""

from __future__ import annotations

import numpy as np


def _dst1(x: np.ndarray, axis: int) -> np.ndarray:
    """Type-I discrete sine transform along ``axis`` via an odd extension and an FFT."""
    x = np.moveaxis(x, axis, 0)
    n = x.shape[0]
    zero = np.zeros((1,) + x.shape[1:], x.dtype)
    extended = np.concatenate([zero, x, zero, -x[::-1]], axis=0)
    y = -np.fft.fft(extended, axis=0).imag[1 : n + 1] / 2
    return np.moveaxis(y, 0, axis)


def poisson_clone(target: np.ndarray, donor: np.ndarray, y0: int, x0: int, ph: int, pw: int) -> np.ndarray:
    """``target`` with the rectangle [y0, y0+ph) × [x0, x0+pw) replaced by the Poisson blend of
    ``donor`` (same size as target). The rectangle must leave a one-pixel border. uint8 out; pixels
    outside the rectangle are copied unchanged."""
    t = target[y0 - 1 : y0 + ph + 1, x0 - 1 : x0 + pw + 1].astype(np.float64)
    g = donor[y0 - 1 : y0 + ph + 1, x0 - 1 : x0 + pw + 1].astype(np.float64)
    # f = g + m with m harmonic inside and m = t - g on the border: only the border terms drive m.
    d = t - g
    b = np.zeros((ph, pw) + t.shape[2:])
    b[0] += d[0, 1:-1]
    b[-1] += d[-1, 1:-1]
    b[:, 0] += d[1:-1, 0]
    b[:, -1] += d[1:-1, -1]
    j = np.arange(1, ph + 1)[:, None]
    k = np.arange(1, pw + 1)[None, :]
    eigen = 4 - 2 * np.cos(np.pi * j / (ph + 1)) - 2 * np.cos(np.pi * k / (pw + 1))
    if b.ndim == 3:
        eigen = eigen[..., None]
    spectrum = _dst1(_dst1(b, 0), 1) / eigen
    m = _dst1(_dst1(spectrum, 0), 1) * (4.0 / ((ph + 1) * (pw + 1)))
    blended = g[1:-1, 1:-1] + m
    out = target.copy()
    out[y0 : y0 + ph, x0 : x0 + pw] = np.clip(blended + 0.5, 0, 255).astype(np.uint8)
    return out
