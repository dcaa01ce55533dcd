#!/usr/bin/env python3
"""Packs an image-folder tree into sasprune's packed dataset format (one file per split).

usage: python3 data/pack_imagefolder.py SRC_DIR OUT_FILE [--size 256] [--classes FILE] [--workers N]

SRC_DIR holds one directory per class (SRC_DIR/<class>/<image>); classes are numbered by their
position in name order, as torchvision's ImageFolder does. Every image is converted to RGB, its
shorter side resized to SIZE (bilinear, like torchvision's Resize(SIZE)) and center-cropped to
SIZE x SIZE (like CenterCrop(SIZE)). Writes OUT_FILE and OUT_FILE.classes.txt (one class name
per line, line i = label i). Pack the validation split with --classes TRAIN_OUT.classes.txt so
that both splits number the classes the same way.

Format (little-endian; see src/data/packed.rs): 8-byte magic b"SASPACK1", u32 height, u32 width,
u32 classes, u32 reserved (0), u64 count; then count records of a u32 label followed by
3*height*width bytes of planar RGB (all red bytes, then green, then blue, each plane row-major).

Needs Pillow (python3 -m pip install pillow).
"""

import argparse
import multiprocessing
import os
import struct
import sys

try:
    from PIL import Image
except ImportError:
    sys.exit("pack_imagefolder.py needs Pillow: python3 -m pip install pillow")

MAGIC = b"SASPACK1"
EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp"}


def fail(msg):
    sys.exit(f"pack_imagefolder.py: error: {msg}")


def list_samples(src, class_names):
    """(path, label) for every image under src/<class>/, in class then file-name order."""
    if not os.path.isdir(src):
        fail(f"{src} is not a directory (expected SRC_DIR/<class>/<image> files)")
    found = sorted(e.name for e in os.scandir(src) if e.is_dir())
    if not found:
        fail(f"{src} holds no class directories (expected SRC_DIR/<class>/<image> files)")
    if class_names is None:
        class_names = found
    else:
        unknown = sorted(set(found) - set(class_names))
        if unknown:
            fail(f"{src} has class directories missing from the --classes list: {unknown[:5]}")
    samples = []
    for name in found:
        folder = os.path.join(src, name)
        files = sorted(
            f for f in os.listdir(folder) if os.path.splitext(f)[1].lower() in EXTENSIONS
        )
        if not files:
            fail(f"class directory {folder} holds no images ({', '.join(sorted(EXTENSIONS))})")
        label = class_names.index(name)
        samples.extend((os.path.join(folder, f), label) for f in files)
    return class_names, samples


def load(job):
    """Planar RGB bytes of one image resized and center-cropped to size x size, or an error."""
    path, size = job
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            w, h = im.size
            # torchvision Resize(size): the shorter side becomes size, the longer one scales
            # with it (truncated), then CenterCrop(size) with torchvision's rounding.
            if w <= h:
                nw, nh = size, int(size * h / w)
            else:
                nw, nh = int(size * w / h), size
            im = im.resize((nw, nh), Image.BILINEAR)
            top = int(round((nh - size) / 2.0))
            left = int(round((nw - size) / 2.0))
            im = im.crop((left, top, left + size, top + size))
            return b"".join(band.tobytes() for band in im.split()), None
    except Exception as e:  # a bad file must name itself, whatever Pillow raised
        return None, f"{path}: {e}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("src", metavar="SRC_DIR", help="directory of class directories")
    parser.add_argument("out", metavar="OUT_FILE", help="packed file to write")
    parser.add_argument("--size", type=int, default=256, help="stored side length (default 256)")
    parser.add_argument("--classes", metavar="FILE", help="class list to number classes by")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    if args.size < 1:
        fail("--size must be positive")

    class_names = None
    if args.classes:
        with open(args.classes) as f:
            class_names = [line.strip() for line in f if line.strip()]
        if not class_names:
            fail(f"{args.classes} lists no classes")
    class_names, samples = list_samples(args.src, class_names)

    # the output's directory is created if needed (like `mkdir -p`)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    tmp = f"{args.out}.tmp-{os.getpid()}"
    record = 4 + 3 * args.size * args.size
    try:
        with open(tmp, "wb") as out:
            out.write(struct.pack("<8sIIIIQ", MAGIC, args.size, args.size, len(class_names), 0,
                                  len(samples)))
            jobs = [(path, args.size) for path, _ in samples]
            with multiprocessing.Pool(max(1, args.workers)) as pool:
                for i, (pixels, err) in enumerate(pool.imap(load, jobs, chunksize=32)):
                    if err:
                        fail(f"cannot read image {err}")
                    out.write(struct.pack("<I", samples[i][1]))
                    out.write(pixels)
                    if (i + 1) % 10000 == 0:
                        print(f"{i + 1}/{len(samples)} images", file=sys.stderr)
            assert out.tell() == 32 + len(samples) * record
            out.flush()
            os.fsync(out.fileno())
        with open(tmp + ".classes", "w") as f:
            f.write("\n".join(class_names) + "\n")
        os.replace(tmp + ".classes", args.out + ".classes.txt")
        os.replace(tmp, args.out)
    finally:
        for leftover in (tmp, tmp + ".classes"):
            if os.path.exists(leftover):
                os.remove(leftover)
    print(f"wrote {args.out}: {len(samples)} images of {args.size}x{args.size}, "
          f"{len(class_names)} classes")


if __name__ == "__main__":
    main()
