"""Tiny PNG and GIF writers (zlib + pure python), so rendering needs no imaging library."""
from __future__ import annotations

import struct
import zlib
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def write_png(path: str | Path, image: np.ndarray) -> None:
    """Write an (H, W, 3) or (H, W) uint8 image as PNG."""
    img = np.ascontiguousarray(image, dtype=np.uint8)
    if img.ndim == 2:
        color_type, channels = 0, 1
    elif img.ndim == 3 and img.shape[2] == 3:
        color_type, channels = 2, 3
    else:
        raise ValueError(f"image must be (H, W) or (H, W, 3), got {img.shape}")
    h, w = img.shape[:2]
    raw = np.zeros((h, 1 + w * channels), dtype=np.uint8)
    raw[:, 1:] = img.reshape(h, w * channels)  # filter byte 0 per row
    data = (b"\x89PNG\r\n\x1a\n"
            + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, color_type, 0, 0, 0))
            + _chunk(b"IDAT", zlib.compress(raw.tobytes(), 6))
            + _chunk(b"IEND", b""))
    Path(path).write_bytes(data)


def _palette() -> np.ndarray:
    """A fixed 6x7x6 colour cube (252 colours) padded to 256."""
    r, g, b = np.meshgrid(np.linspace(0, 255, 6), np.linspace(0, 255, 7), np.linspace(0, 255, 6), indexing="ij")
    pal = np.stack([r.ravel(), g.ravel(), b.ravel()], axis=1)
    return np.vstack([pal, np.zeros((4, 3))]).astype(np.uint8)


def _quantize(img: np.ndarray) -> np.ndarray:
    ri = np.rint(img[..., 0] / 51.0).astype(np.int64)
    gi = np.rint(img[..., 1] / 42.5).astype(np.int64)
    bi = np.rint(img[..., 2] / 51.0).astype(np.int64)
    return (ri * 42 + gi * 6 + bi).astype(np.uint8)


def _lzw(indices: bytes, min_code_size: int = 8) -> bytes:
    """GIF-flavoured LZW compression with variable code width."""
    clear, end = 1 << min_code_size, (1 << min_code_size) + 1
    table = {bytes([i]): i for i in range(clear)}
    next_code, width = end + 1, min_code_size + 1
    out = bytearray()
    bitbuf = nbits = 0

    def emit(code: int) -> None:
        nonlocal bitbuf, nbits
        bitbuf |= code << nbits
        nbits += width
        while nbits >= 8:
            out.append(bitbuf & 0xFF)
            bitbuf >>= 8
            nbits -= 8

    emit(clear)
    w = b""
    for byte in indices:
        wc = w + bytes([byte])
        if wc in table:
            w = wc
            continue
        emit(table[w])
        if next_code < 4096:
            table[wc] = next_code
            next_code += 1
            if next_code > (1 << width) and width < 12:
                width += 1
        else:
            emit(clear)
            table = {bytes([i]): i for i in range(clear)}
            next_code, width = end + 1, min_code_size + 1
        w = bytes([byte])
    if w:
        emit(table[w])
    emit(end)
    if nbits:
        out.append(bitbuf & 0xFF)
    return bytes(out)


def write_gif(path: str | Path, frames: Iterable[np.ndarray] | Sequence[np.ndarray], fps: float = 15.0) -> None:
    """Write (H, W, 3) uint8 frames as a looping animated GIF."""
    frames = [np.asarray(f, dtype=np.uint8) for f in frames]
    if not frames:
        raise ValueError("no frames to write")
    h, w = frames[0].shape[:2]
    delay = max(1, int(round(100.0 / fps)))
    buf = bytearray(b"GIF89a" + struct.pack("<HHBBB", w, h, 0xF7, 0, 0) + _palette().tobytes())
    buf += b"\x21\xff\x0bNETSCAPE2.0\x03\x01\x00\x00\x00"  # loop forever
    for f in frames:
        if f.shape[:2] != (h, w):
            raise ValueError("all frames must have the same size")
        buf += b"\x21\xf9\x04\x00" + struct.pack("<H", delay) + b"\x00\x00"
        buf += b"\x2c" + struct.pack("<HHHHB", 0, 0, w, h, 0)
        data = _lzw(_quantize(f).tobytes())
        buf += b"\x08"
        for i in range(0, len(data), 255):
            block = data[i:i + 255]
            buf += bytes([len(block)]) + block
        buf += b"\x00"
    buf += b"\x3b"
    Path(path).write_bytes(bytes(buf))
