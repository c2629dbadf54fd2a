#!/usr/bin/env python3
"""Generate a large old/new pair for delta benchmarks (not used by tests).

old: random bytes. new: old with realistic edits — inserted blocks, deleted blocks,
blocks moved far away, and scattered single-byte changes — written in streaming
fashion so memory stays small.   gen-pair.py OUT_DIR [SIZE_MIB=2048] [SEED=1]
"""
import os
import random
import sys

out = sys.argv[1]
size = int(sys.argv[2]) << 20 if len(sys.argv) > 2 else 2048 << 20
seed = int(sys.argv[3]) if len(sys.argv) > 3 else 1
rng = random.Random(seed)
os.makedirs(out, exist_ok=True)
old_path, new_path = os.path.join(out, "big.old"), os.path.join(out, "big.new")
PIECE = 16 << 20

if not (os.path.exists(old_path) and os.path.getsize(old_path) == size):
    with open(old_path, "wb") as f:
        left = size
        while left:
            n = min(PIECE, left)
            f.write(rng.randbytes(n))
            left -= n

if size < 1 << 20:
    sys.exit("gen-pair.py: SIZE_MIB must be at least 1")
# The edits draw from their own generator: continuing old's would make them depend on
# whether old was generated in this run or reused — and a fresh generator seeded like
# old's would "insert" copies of old's first bytes, which any delta finds for free.
rng = random.Random(seed + 0x5EED_0F_ED17)
# Edit plan over old offsets: a sorted list of (offset, kind, arg). Edit sizes shrink
# with small files so every range stays valid.
MOVE_MAX = min(8 << 20, size // 4)
edits = []
for _ in range(200):  # insertions of 1-64 KiB
    edits.append((rng.randrange(size), "ins", rng.randrange(1 << 10, 64 << 10)))
for _ in range(100):  # deletions of 1-256 KiB
    edits.append((rng.randrange(size), "del", rng.randrange(1 << 10, 256 << 10)))
for _ in range(20):  # 1-8 MiB blocks copied from far away (moved content)
    length = rng.randrange(MOVE_MAX // 8, MOVE_MAX)
    edits.append((rng.randrange(size), "move", (rng.randrange(size - length), length)))
edits.sort(key=lambda e: e[0])
SCATTER = 1 << 16  # one changed byte per 64 KiB on average

with open(old_path, "rb") as src, open(old_path, "rb") as far, open(new_path, "wb") as dst:
    pos = 0

    def copy_to(end):
        global pos
        while pos < end:
            n = min(PIECE, end - pos)
            src.seek(pos)
            buf = bytearray(src.read(n))
            for _ in range(max(1, n // SCATTER)):
                i = rng.randrange(n)
                buf[i] = (buf[i] + 1) & 0xFF
            dst.write(buf)
            pos += n

    for off, kind, arg in edits:
        if off < pos:
            continue
        copy_to(off)
        if kind == "ins":
            dst.write(rng.randbytes(arg))
        elif kind == "del":
            pos = min(size, pos + arg)
        else:
            start, length = arg
            far.seek(start)
            dst.write(far.read(length))
    copy_to(size)
print(f"{old_path}: {os.path.getsize(old_path)} bytes; {new_path}: {os.path.getsize(new_path)} bytes")
