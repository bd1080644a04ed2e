#!/usr/bin/env python3
"""examples/tiny-arldm/first/draw.py - the demo's first frames (continuation
starts from them): three flat 64x64 drawings, made with the standard library
only (zlib + struct). Run it here to rewrite snow-day.png, fishing.png and
birthday.png."""
import struct
import zlib

W = H = 64


def png(path, px):
    raw = b"".join(b"\0" + bytes(c for p in row for c in p) for row in px)

    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)

    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", W, H, 8, 2, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def scene(sky, ground, horizon, blobs):
    """sky above the horizon, ground below, then filled circles (cx, cy, r, colour)"""
    px = [[sky if y < horizon else ground for x in range(W)] for y in range(H)]
    for cx, cy, r, col in blobs:
        for y in range(H):
            for x in range(W):
                if (x - cx) ** 2 + (y - cy) ** 2 <= r * r:
                    px[y][x] = col
    return px


BLUE, WHITE, GREEN, BROWN = (120, 170, 230), (245, 245, 250), (60, 140, 70), (120, 80, 40)
png("snow-day.png", scene(BLUE, WHITE, 36, [(20, 40, 7, (70, 110, 200)), (42, 42, 6, (80, 170, 90)),
                                             (52, 10, 5, (250, 220, 80))]))
png("fishing.png", scene((250, 180, 120), (50, 100, 170), 34, [(16, 30, 7, (240, 200, 60)),
                                                                (30, 30, 7, (235, 235, 235)),
                                                                (46, 46, 4, (200, 90, 60))]))
png("birthday.png", scene((240, 220, 200), BROWN, 44, [(32, 40, 9, (220, 50, 60)), (14, 30, 7, (240, 150, 180)),
                                                         (50, 30, 6, (70, 110, 200))]))
