"""Reading our QR codes back with a third-party reader (zxing-cpp), from the SVG text itself,
so that what scans is what a browser draws. Used by the unit tests of health_links.qr and by
the portal's tests (the SVG taken from the page)."""

from __future__ import annotations

import re

import zxingcpp

PIXELS_PER_MODULE = 4


def rasterise(svg: str) -> memoryview:
    """Draws an SVG QR (the run-length path segno and node-qrcode both write: ``M``/``m`` moves
    and ``h`` runs along module rows) as a grayscale image zxing-cpp can read. This reads the
    SVG text itself, so what scans is what a browser would draw."""
    view_box = re.search(r'viewBox="0 0 ([0-9.]+) ([0-9.]+)"', svg)
    scale = re.search(r"scale\(([0-9.]+)\)", svg)
    if view_box:
        size = round(float(view_box.group(1)))
    else:
        width = re.search(r'<svg[^>]*\swidth="([0-9.]+)"', svg)
        assert width is not None
        size = round(float(width.group(1)) / (float(scale.group(1)) if scale else 1.0))
    path = re.search(r'<path[^>]*\sstroke="[^"]+"[^>]*\sd="([^"]+)"', svg)
    assert path is not None, "no stroked path"
    dark = set()
    x = y = 0.0
    for command, first, second in re.findall(
        r"([MmhH])\s*(-?[0-9.]+)(?:[ ,](-?[0-9.]+))?", path.group(1)
    ):
        if command in "Mm":
            dx, dy = float(first), float(second)
            x, y = (dx, dy) if command == "M" else (x + dx, y + dy)
        else:
            end = float(first) if command == "H" else x + float(first)
            for column in range(round(x), round(end)):
                dark.add((column, int(y)))
            x = end
    side = size * PIXELS_PER_MODULE
    image = bytearray(b"\xff" * side * side)
    for column, row in dark:
        for dy in range(PIXELS_PER_MODULE):
            start = (row * PIXELS_PER_MODULE + dy) * side + column * PIXELS_PER_MODULE
            image[start : start + PIXELS_PER_MODULE] = b"\x00" * PIXELS_PER_MODULE
    return memoryview(bytes(image)).cast("B", (side, side))


def scan(svg: str) -> zxingcpp.Barcode:
    found = zxingcpp.read_barcodes(rasterise(svg))
    assert len(found) == 1
    return found[0]


