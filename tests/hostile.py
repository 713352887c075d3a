"""Hostile images made here, for the tests and bench/hostile_inputs.py: the classes the probe of
issue 14 found (scan bomb, memory bombs, header amplifiers), each small enough to upload."""

from __future__ import annotations

import io
import struct
import zlib

from PIL import Image


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def flat_progressive_jpeg(size: tuple[int, int] = (2000, 2000)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (120, 130, 140)).save(out, "JPEG", progressive=True, quality=80)
    return out.getvalue()


def scan_bomb(scans: int = 2000, size: tuple[int, int] = (2000, 2000)) -> bytes:
    """A flat progressive JPEG of `scans` scans, its last (and the tables before it) repeated:
    every repeat makes libjpeg pass over the whole coefficient buffer once more."""
    data = flat_progressive_jpeg(size)
    end = len(data) - 2  # before EOI
    last_scan = data.rfind(b"\xff\xda", 0, end)
    # The segments since the scan before it (its Huffman tables) belong to the repeat.
    previous_scan_end = data.rfind(b"\xff\xda", 0, last_scan)
    tables = data.find(b"\xff\xc4", previous_scan_end, last_scan)
    start = tables if tables != -1 else last_scan
    repeat = data[start:end]
    repeats = max(0, scans - data.count(b"\xff\xda"))
    return data[:end] + repeat * repeats + b"\xff\xd9"


def _jpeg_with_header(segments: bytes) -> bytes:
    """A small real JPEG with `segments` inserted right after SOI."""
    out = io.BytesIO()
    Image.new("RGB", (200, 200), (90, 60, 30)).save(out, "JPEG")
    data = out.getvalue()
    return data[:2] + segments + data[2:]


def jpeg_fill_bytes(count: int = 9_000_000) -> bytes:
    """0xFF fill bytes before a marker: Pillow's parser skips them one by one."""
    return _jpeg_with_header(b"\xff" * count + b"\xfe\x00\x02")


def jpeg_comments(count: int = 2_400_000) -> bytes:
    """Empty COM segments, 4 bytes each."""
    return _jpeg_with_header(b"\xff\xfe\x00\x02" * count)


def jpeg_app15(count: int = 1_500_000) -> bytes:
    return _jpeg_with_header(b"\xff\xef\x00\x02" * count)


def png_private_chunks(count: int = 700_000) -> bytes:
    """A small PNG with `count` empty private chunks before its pixels."""
    ihdr = png_chunk(b"IHDR", struct.pack(">IIBBBBB", 200, 200, 8, 2, 0, 0, 0))
    private = png_chunk(b"prVt", b"") * count
    pixels = zlib.compress((b"\0" + b"\x80" * 600) * 200)
    return (
        b"\x89PNG\r\n\x1a\n" + ihdr + private + png_chunk(b"IDAT", pixels) + png_chunk(b"IEND", b"")
    )


def lossless_webp_bomb(width: int = 6000, height: int = 6000) -> bytes:
    """A 34-byte lossless WebP declaring `width`×`height` with alpha."""
    bits = (width - 1) | (height - 1) << 14 | 1 << 28
    payload = b"\x2f" + bits.to_bytes(4, "little") + b"\x00" * 9
    chunk = b"VP8L" + struct.pack("<I", len(payload)) + payload
    return b"RIFF" + struct.pack("<I", 4 + len(chunk)) + b"WEBP" + chunk


def rgba16_png(width: int = 6000, height: int = 6000) -> bytes:
    """A 16-bit RGBA PNG, all zeros: a few hundred kB that decode to hundreds of MB."""
    row = b"\0" + b"\0" * (width * 8)
    compressor = zlib.compressobj(9)
    body = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    ihdr = png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, 6, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + ihdr + png_chunk(b"IDAT", body) + png_chunk(b"IEND", b"")


def rgba_png(width: int = 4000, height: int = 4000) -> bytes:
    """Within the memory budget (about 144 MB to process), so decoded: heavy but legal."""
    out = io.BytesIO()
    Image.new("RGBA", (width, height), (10, 20, 30, 200)).save(out, "PNG")
    return out.getvalue()


def long_thin_png(width: int = 128, height: int = 312_500) -> bytes:
    out = io.BytesIO()
    Image.new("L", (width, height), 128).save(out, "PNG")
    return out.getvalue()
