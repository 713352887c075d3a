"""A cheap walk over an image file's structure, before any decoder parses it.

It reads what the header declares (size, channels, bit depth, progressive or lossless) and
counts what a decoder would loop over: JPEG scans, segments and fill bytes, PNG chunks, WebP
chunks, HEIF boxes. A file with absurd counts is refused here, because Pillow's parsers spend
seconds (and hundreds of MB) walking such structure one item at a time. The walk itself is
linear and skips entropy-coded data with one regular-expression search per scan, so it takes
milliseconds on the largest upload.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

from bot.i18n import N_
from bot.images.errors import Phrase

__all__ = ["LIMITS", "Layout", "OddStructure", "ScanLimits", "scan"]


class OddStructure(ValueError):
    """The file's structure is past a limit. `phrase` says which, for the user ("over 40
    scans"), `str()` the same in English."""

    def __init__(self, message: str, count: int) -> None:
        self.phrase = Phrase.of(message, count=count)
        super().__init__(self.phrase.english())


@dataclass(frozen=True)
class ScanLimits:
    # libjpeg's own progressions use up to 10 scans, optimisers a few more; each scan costs a
    # pass over the whole coefficient buffer (about 20 ms at 36 MP). So scans are limited
    # twice: in number, and in scans times pixels (12 scans at 40 MP, 40 up to 12 MP).
    jpeg_scans: int = 40
    jpeg_scan_pixels: int = 480_000_000
    # APPn and COM segments: EXIF, XMP (extended XMP splits into 64 kB pieces), ICC pieces.
    jpeg_metadata_segments: int = 256
    # Every other marker segment (tables, restart markers outside scans...).
    jpeg_segments: int = 1024
    # 0xFF fill bytes and junk between segments, which Pillow skips one byte at a time.
    jpeg_filler_bytes: int = 64 * 1024
    png_ancillary_chunks: int = 256
    # IDAT/fdAT pieces: encoders write 8-64 kB pieces; Pillow handles each in Python.
    png_data_chunks: int = 16 * 1024
    webp_chunks: int = 1024
    heif_boxes: int = 4096


LIMITS = ScanLimits()


@dataclass(frozen=True)
class Layout:
    """What a file declares about its pixels."""

    format: str  # JPEG, PNG, WEBP, HEIF (Pillow's names)
    width: int
    height: int
    channels: int  # samples per pixel, alpha included
    bit_depth: int
    alpha: bool = False
    palette: bool = False
    progressive: bool = False  # JPEG: the decoder keeps every coefficient until the end
    # JPEG: DCT coefficients per pixel over all components, after chroma subsampling.
    coefficients_per_pixel: float = 0.0
    lossless: bool = False  # WebP
    animated: bool = False

    def describe(self) -> Phrase:
        """ "6000×6000, 16-bit PNG with transparency": for the user's message."""
        kind: str | Phrase = {"WEBP": "WebP", "HEIF": "HEIC"}.get(self.format, self.format)
        if self.lossless:
            kind = Phrase.of(N_("lossless {format}"), format=kind)
        if self.progressive:
            kind = Phrase.of(N_("progressive {format}"), format=kind)
        if self.bit_depth > 8:
            kind = Phrase.of(N_("{bits}-bit {format}"), bits=self.bit_depth, format=kind)
        if self.alpha:
            kind = Phrase.of(N_("{format} with transparency"), format=kind)
        return Phrase.of(N_("{size}, {format}"), size=f"{self.width}×{self.height}", format=kind)


def scan(data: bytes, limits: ScanLimits = LIMITS) -> Layout | None:
    """The layout of a JPEG, PNG, WebP or HEIF file; None when the file is none of these or
    does not say (the decoder then finds it damaged or unknown). Raises OddStructure."""
    if data.startswith(b"\xff\xd8"):
        return _jpeg(data, limits)
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return _png(data, limits)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _webp(data, limits)
    if data[4:8] == b"ftyp":
        return _heif(data, limits)
    return None


# --- JPEG ------------------------------------------------------------------------------

_FF_RUN = re.compile(rb"\xff+")
# The end of entropy-coded data: 0xFF followed by neither a stuffed zero nor a restart marker.
_SCAN_END = re.compile(rb"\xff[^\x00\xd0-\xd7]")
_STANDALONE = {0x01, *range(0xD0, 0xD9)}  # TEM, RSTn, SOI
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_PROGRESSIVE_SOF = {0xC2, 0xC6, 0xCA, 0xCE}
_SOS, _EOI, _COM = 0xDA, 0xD9, 0xFE


def _jpeg(data: bytes, limits: ScanLimits) -> Layout | None:
    end = len(data)
    pos = 2
    scans = metadata = segments = filler = 0
    layout: Layout | None = None
    while pos < end:
        if data[pos] != 0xFF:  # junk between segments
            found = data.find(b"\xff", pos)
            next_ff = end if found < 0 else found
            filler += next_ff - pos
            pos = next_ff
            if filler > limits.jpeg_filler_bytes:
                raise OddStructure(N_("over {count} filler bytes"), limits.jpeg_filler_bytes)
            continue
        run = _FF_RUN.match(data, pos)
        assert run is not None
        filler += run.end() - pos - 1
        if filler > limits.jpeg_filler_bytes:
            raise OddStructure(N_("over {count} filler bytes"), limits.jpeg_filler_bytes)
        pos = run.end()
        if pos >= end:
            break
        marker = data[pos]
        pos += 1
        if marker == _EOI:
            break
        if marker in _STANDALONE:
            segments += 1
        else:
            if pos + 2 > end:
                break
            (length,) = struct.unpack_from(">H", data, pos)
            if length < 2:
                return layout  # damaged: the decoder says so
            body = data[pos + 2 : pos + length]
            pos += length
            if 0xE0 <= marker <= 0xEF or marker == _COM:
                metadata += 1
                if metadata > limits.jpeg_metadata_segments:
                    raise OddStructure(
                        N_("over {count} metadata segments"), limits.jpeg_metadata_segments
                    )
                continue
            segments += 1
            if marker in _SOF and layout is None:
                layout = _jpeg_frame(body, progressive=marker in _PROGRESSIVE_SOF)
            elif marker == _SOS:
                scans += 1
                allowed = _allowed_scans(layout, limits)
                if scans > allowed:
                    raise OddStructure(N_("over {count} scans"), allowed)
                found = _SCAN_END.search(data, pos)
                pos = end if found is None else found.start()
        if segments > limits.jpeg_segments:
            raise OddStructure(N_("over {count} segments"), limits.jpeg_segments)
    return layout


def _allowed_scans(layout: Layout | None, limits: ScanLimits) -> int:
    pixels = layout.width * layout.height if layout is not None else 0
    by_work = limits.jpeg_scan_pixels // pixels if pixels else limits.jpeg_scans
    return max(1, min(limits.jpeg_scans, by_work))


def _jpeg_frame(body: bytes, *, progressive: bool) -> Layout | None:
    if len(body) < 6:
        return None
    precision, height, width, count = struct.unpack_from(">BHHB", body)
    factors = [body[7 + 3 * i] for i in range(count) if 8 + 3 * i <= len(body)]
    if not factors or height == 0 or width == 0:
        return None
    h_max = max(f >> 4 for f in factors) or 1
    v_max = max(f & 0x0F for f in factors) or 1
    coefficients = sum((f >> 4) * (f & 0x0F) for f in factors) / (h_max * v_max)
    return Layout(
        format="JPEG",
        width=width,
        height=height,
        channels=count,
        bit_depth=precision,
        progressive=progressive,
        coefficients_per_pixel=coefficients,
    )


# --- PNG -------------------------------------------------------------------------------

_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}


def _png(data: bytes, limits: ScanLimits) -> Layout | None:
    end = len(data)
    pos = 8
    ancillary = pieces = 0
    header: tuple[int, int, int, int] | None = None
    transparency = animated = False
    while pos + 8 <= end:
        length, kind = struct.unpack_from(">I4s", data, pos)
        if kind == b"IHDR" and header is None and length >= 13 and pos + 21 <= end:
            header = struct.unpack_from(">IIBB", data, pos + 8)
        elif kind in (b"IDAT", b"fdAT"):
            pieces += 1
            if pieces > limits.png_data_chunks:
                raise OddStructure(N_("over {count} data chunks"), limits.png_data_chunks)
        elif kind == b"IEND":
            break
        else:
            ancillary += 1
            if ancillary > limits.png_ancillary_chunks:
                raise OddStructure(N_("over {count} extra chunks"), limits.png_ancillary_chunks)
            transparency = transparency or kind == b"tRNS"
            animated = animated or kind == b"acTL"
        pos += 12 + length
    if header is None:
        return None
    width, height, depth, colour = header
    if colour not in _PNG_CHANNELS or width == 0 or height == 0:
        return None
    alpha = colour in (4, 6) or transparency
    return Layout(
        format="PNG",
        width=width,
        height=height,
        channels=_PNG_CHANNELS[colour],
        bit_depth=depth,
        alpha=alpha,
        palette=colour == 3,
        animated=animated,
    )


# --- WebP ------------------------------------------------------------------------------


def _webp(data: bytes, limits: ScanLimits) -> Layout | None:
    end = len(data)
    pos = 12
    chunks = 0
    canvas: tuple[int, int] | None = None
    alpha = animated = lossless = False
    while pos + 8 <= end:
        kind = data[pos : pos + 4]
        (length,) = struct.unpack_from("<I", data, pos + 4)
        body = data[pos + 8 : pos + 8 + min(length, 16)]
        chunks += 1
        if chunks > limits.webp_chunks:
            raise OddStructure(N_("over {count} chunks"), limits.webp_chunks)
        if kind == b"VP8X" and len(body) >= 10:
            flags = body[0]
            alpha, animated = bool(flags & 0x10), bool(flags & 0x02)
            width = 1 + int.from_bytes(body[4:7], "little")
            height = 1 + int.from_bytes(body[7:10], "little")
            canvas = canvas or (width, height)
        elif kind == b"VP8L" and len(body) >= 5 and body[0] == 0x2F:
            lossless = True
            bits = int.from_bytes(body[1:5], "little")
            alpha = alpha or bool(bits >> 28 & 1)
            canvas = canvas or (1 + (bits & 0x3FFF), 1 + (bits >> 14 & 0x3FFF))
        elif kind == b"VP8 " and len(body) >= 10 and body[3:6] == b"\x9d\x01\x2a":
            width, height = struct.unpack_from("<HH", body, 6)
            canvas = canvas or (width & 0x3FFF, height & 0x3FFF)
        elif kind == b"ALPH":
            alpha = True
        pos += 8 + length + (length & 1)
    if canvas is None or 0 in canvas:
        return None
    return Layout(
        format="WEBP",
        width=canvas[0],
        height=canvas[1],
        channels=4 if alpha else 3,
        bit_depth=8,
        alpha=alpha,
        lossless=lossless,
        animated=animated,
    )


# --- HEIF ------------------------------------------------------------------------------

# Boxes whose children hold the image properties; meta is a full box (4 bytes more).
_CONTAINERS = {b"meta": 4, b"iprp": 0, b"ipco": 0}


def _heif(data: bytes, limits: ScanLimits) -> Layout | None:
    sizes: list[tuple[int, int]] = []
    depth = 8
    alpha = False
    boxes = 0
    # Boxes still to walk: (start, end) ranges of sibling boxes.
    pending = [(0, len(data))]
    while pending:
        pos, end = pending.pop()
        while pos + 8 <= end:
            size, kind = struct.unpack_from(">I4s", data, pos)
            header = 8
            if size == 1 and pos + 16 <= end:
                (size,) = struct.unpack_from(">Q", data, pos + 8)
                header = 16
            elif size == 0:
                size = end - pos
            if size < header:
                break
            boxes += 1
            if boxes > limits.heif_boxes:
                raise OddStructure(N_("over {count} boxes"), limits.heif_boxes)
            box_end = min(pos + size, end)
            if kind in _CONTAINERS:
                pending.append((pos + header + _CONTAINERS[kind], box_end))
            elif kind == b"ispe" and pos + header + 12 <= box_end:
                sizes.append(struct.unpack_from(">II", data, pos + header + 4))
            elif kind == b"pixi" and pos + header + 5 <= box_end:
                count = data[pos + header + 4]
                found = data[pos + header + 5 : pos + header + 5 + count]
                depth = max(depth, *found) if found else depth
            elif kind == b"auxC" and b"alpha" in data[pos:box_end]:
                alpha = True
            pos += size
    if not sizes:
        return None
    width, height = max(sizes, key=lambda s: s[0] * s[1])
    if width == 0 or height == 0:
        return None
    return Layout(
        format="HEIF",
        width=width,
        height=height,
        channels=4 if alpha else 3,
        bit_depth=depth,
        alpha=alpha,
    )
