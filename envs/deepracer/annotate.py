"""Marks drawn on top-down pictures: text in a tiny 3x5 pixel font, lines, a speed colour bar, the start
line and the driving direction. Pure numpy, pixel coordinates (row, column), images (H, W, 3) uint8."""
from __future__ import annotations

import numpy as np

# 3x5 glyphs, one string of 15 bits per character (rows top to bottom)
_GLYPHS = {
    "0": "111101101101111", "1": "010110010010111", "2": "111001111100111", "3": "111001111001111",
    "4": "101101111001001", "5": "111100111001111", "6": "111100111101111", "7": "111001010010010",
    "8": "111101111101111", "9": "111101111001111", ".": "000000000000010", "%": "101001010100101",
    "/": "001001010100100", "-": "000000111000000", ":": "000010000010000", " ": "000000000000000",
    "S": "111100111001111", "T": "111010010010010", "E": "111100111100111", "P": "111101111100100",
    "M": "101111111101101", "D": "110101101101110", "R": "110101110101101", "O": "111101101101111",
    "G": "111100101101111", "X": "101101010101101",
}
WHITE = np.array([255, 255, 255], dtype=np.uint8)
BLACK = np.array([0, 0, 0], dtype=np.uint8)


def text_size(text: str, scale: int = 1) -> tuple[int, int]:
    return 5 * scale, (4 * len(text) - 1) * scale


def draw_text(img: np.ndarray, text: str, row: int, col: int, scale: int = 1, color=WHITE,
              background=BLACK) -> None:
    """Write ``text`` (digits, a few capitals, ``.%/-:``) with its top-left corner at (row, col)."""
    h, w = text_size(text, scale)
    r0, c0 = max(row - scale, 0), max(col - scale, 0)
    if background is not None:
        img[r0:row + h + scale, c0:col + w + scale] = background
    for k, ch in enumerate(text.upper()):
        bits = np.array([b == "1" for b in _GLYPHS.get(ch, _GLYPHS[" "])]).reshape(5, 3)
        glyph = np.kron(bits, np.ones((scale, scale), dtype=bool))
        r, c = row, col + 4 * k * scale
        sub = img[r:r + 5 * scale, c:c + 3 * scale]
        sub[glyph[:sub.shape[0], :sub.shape[1]]] = color


def draw_line(img: np.ndarray, p0: tuple[float, float], p1: tuple[float, float], color, width: int = 1) -> None:
    """A straight line between pixel points (row, col), ``width`` pixels thick."""
    n = int(max(abs(p1[0] - p0[0]), abs(p1[1] - p0[1]), 1)) * 2
    t = np.linspace(0.0, 1.0, n + 1)
    rows = np.rint(p0[0] + (p1[0] - p0[0]) * t).astype(int)
    cols = np.rint(p0[1] + (p1[1] - p0[1]) * t).astype(int)
    h, w = img.shape[:2]
    for dr in range(width):
        for dc in range(width):
            r, c = rows + dr - width // 2, cols + dc - width // 2
            ok = (r >= 0) & (r < h) & (c >= 0) & (c < w)
            img[r[ok], c[ok]] = color


def colour_bar(img: np.ndarray, colours: np.ndarray, low: str, high: str, scale: int = 1) -> np.ndarray:
    """``img`` with a vertical colour bar on its right (``colours``: (K, 3), slow at the bottom) labelled
    ``low`` at the bottom and ``high`` at the top."""
    h = img.shape[0]
    label_w = max(text_size(low, scale)[1], text_size(high, scale)[1])
    bar_w, pad = 6 * scale, 4 * scale
    panel = np.full((h, pad + bar_w + pad + label_w + pad, 3), 255, dtype=np.uint8)
    top, bottom = 4 * scale, h - 4 * scale
    idx = np.linspace(len(colours) - 1, 0, max(bottom - top, 1)).astype(int)
    panel[top:bottom, pad:pad + bar_w] = colours[idx][:, None, :]
    draw_text(panel, high, top, pad + bar_w + pad, scale, color=BLACK, background=None)
    draw_text(panel, low, bottom - 5 * scale, pad + bar_w + pad, scale, color=BLACK, background=None)
    return np.concatenate([img, panel], axis=1)
