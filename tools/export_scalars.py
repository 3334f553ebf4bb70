"""TensorBoard scalars of one or more workdirs -> one JSON {workdir: {tag: [[step, value], ...]}}.

    python tools/export_scalars.py runs/demo1 runs/demo2 --out scalars.json
"""
import argparse
import glob
import json
import os

from tensorboardX.proto import event_pb2


def read_events(path: str) -> dict:
    """Every scalar of one events file -> {tag: [[step, value], ...]}."""
    import struct

    scalars = {}
    with open(path, "rb") as f:
        while True:
            header = f.read(12)
            if len(header) < 12:
                break
            (length,) = struct.unpack("<Q", header[:8])
            data = f.read(length)
            f.read(4)
            if len(data) < length:
                break
            event = event_pb2.Event()
            event.ParseFromString(data)
            for value in event.summary.value:
                if value.HasField("simple_value"):
                    scalars.setdefault(value.tag, []).append([int(event.step), float(value.simple_value)])
                elif value.HasField("tensor") and value.tensor.float_val:
                    scalars.setdefault(value.tag, []).append([int(event.step), float(value.tensor.float_val[0])])
    return scalars


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdirs", nargs="+")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    result = {}
    for workdir in args.workdirs:
        merged = {}
        for path in sorted(glob.glob(os.path.join(workdir, "**", "events.out.tfevents.*"), recursive=True)):
            for tag, rows in read_events(path).items():
                merged.setdefault(tag, []).extend(rows)
        result[workdir] = {tag: sorted(rows) for tag, rows in merged.items()}
    with open(args.out, "w") as f:
        json.dump(result, f)
    print(f"wrote {args.out}: " + ", ".join(f"{w}: {len(t)} tags" for w, t in result.items()))


if __name__ == "__main__":
    main()
