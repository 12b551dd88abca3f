"""Independent reference implementation of forjar's tree digest (book: Hashing).

    python3 tree_digest.py PATH      # prints blake3:<hex>, as `forjar hash path PATH` does

Needs the `blake3` package from PyPI.
"""
import os
import stat
import struct
import sys

from blake3 import blake3

CONTEXT = "forjar tree v1"


def u64(n: int) -> bytes:
    return struct.pack("<Q", n)


def digest(path: bytes) -> bytes:
    st = os.lstat(path)
    if stat.S_ISREG(st.st_mode):
        with open(path, "rb") as f:
            contents = f.read()
        x = 1 if st.st_mode & stat.S_IXUSR else 0
        node = b"F" + bytes([x]) + u64(len(contents)) + blake3(contents).digest()
    elif stat.S_ISLNK(st.st_mode):
        target = os.readlink(path)
        node = b"L" + u64(len(target)) + target
    elif stat.S_ISDIR(st.st_mode):
        names = sorted(os.listdir(path))  # bytes sort by raw bytes
        node = b"D" + u64(len(names))
        for name in names:
            node += u64(len(name)) + name + digest(os.path.join(path, name))
    else:
        raise SystemExit(f"{path!r} is neither a file, a directory nor a symlink")
    return blake3(node, derive_key_context=CONTEXT).digest()


if __name__ == "__main__":
    print("blake3:" + digest(os.fsencode(sys.argv[1])).hex())
