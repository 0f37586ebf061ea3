"""Read the history rows of a W&B offline run file (``run-<id>.wandb``), for tests.

The file is a LevelDB-style log (32 KiB blocks of records with a 7-byte header: CRC32, length,
type) after a 7-byte W&B header, each record a ``wandb_internal_pb2.Record`` protobuf.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

BLOCK, HEADER = 32768, 7
FULL, LAST = 1, 4


def settle() -> None:
    """Wait until W&B has written every run file of this process.

    ``run.finish()`` returns once the run's data reached the W&B service, which closes the run's file (its last
    block, the console's output.log) a few milliseconds later; ``wandb.teardown()`` waits for that.
    """
    import wandb

    wandb.teardown()


def records(path: Path) -> list[bytes]:
    settle()
    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    out, buf, pos = [], b"", HEADER
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:  # block trailer padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        pos += HEADER
        if kind == 0 and length == 0:  # zero-filled rest of a block
            pos += left - HEADER
            continue
        buf += data[pos : pos + length]
        pos += length
        if kind in (FULL, LAST):
            out.append(buf)
            buf = b""
    return out


def history(path: Path) -> list[dict]:
    """Every logged row as a dict of key -> value."""
    from wandb.proto import wandb_internal_pb2

    rows = []
    for data in records(path):
        r = wandb_internal_pb2.Record()
        r.ParseFromString(data)
        if r.WhichOneof("record_type") == "history":
            rows.append({(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in r.history.item})
    return rows
