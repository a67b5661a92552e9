"""Take a model folder to the GPU machine, which accepts at most 64 MiB a call.

  python benchmarks/device_payload.py pack NAME MODEL_DIR [--chunk-mb 60]   (here)
  python benchmarks/device_payload.py state                                 (here, after a commit)
  python benchmarks/device_payload.py stash [NAME ...]                      (there, each call)
  python benchmarks/device_payload.py unpack NAME DEST                      (there, last call)
  python benchmarks/device_payload.py receive PIECES_DIR NAME DEST          (here, after)

`pack` writes .device_payload/NAME/: the folder's small files (config, tokenizer) in meta/,
and its model.safetensors as float16 cut into part-NN files of at most --chunk-mb.  Float16
halves the bytes; a pre-trained checkpoint loses nothing that fine-tuning notices (its weights
are far inside float16's range).  Each call carries some parts (`carry`: .device_payload/NAME/
part-NN); `stash` copies what arrived to STASH, which lasts as long as the machine stays warm;
`unpack` joins the parts, checks the SHA-256 `pack` recorded, and writes DEST with float32
weights, a folder transformers loads as it would the original.  It names any part missing.

The way back (at most 8 files of 16 MiB): `send_back` tars a folder with its safetensors
weights in float16 and cuts it into NAME.tar.part-NN; `receive` joins them and writes DEST
with float32 weights.

`pack` and `state` record the checkout's git state (benchmarks.report.write_source_state);
run there with BENCH_COPIED_CHECKOUT=1, the results name the commit the copy came from.

Measured on the H200 (2026-11-30): a warm call carrying one 60 MiB part took about 4 s, so
all-mpnet-base-v2 (438 MB, 209 MiB in float16) reached it in four calls.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PAYLOAD = ROOT / ".device_payload"  # git-ignored
STASH = Path("/tmp/device_payload")
WEIGHTS = "model.safetensors"
MANIFEST = "payload.json"
PIECE = 15 * 2**20  # under the 16 MiB a file that comes back may hold


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def pack(name: str, model_dir: Path, chunk_mb: float, payload: Path = PAYLOAD, state: dict | None = None) -> list[Path]:
    """payload/NAME/: meta/ (the small files and MANIFEST) and the float16 weights in parts."""
    from safetensors.torch import load_file, save_file

    out = payload / name
    shutil.rmtree(out, ignore_errors=True)
    (out / "meta").mkdir(parents=True)
    for item in model_dir.iterdir():  # config, tokenizer, pooling: everything but the weights
        if item.name != WEIGHTS:
            (shutil.copytree if item.is_dir() else shutil.copy2)(item, out / "meta" / item.name)
    tensors = {k: (v.half() if v.is_floating_point() else v).contiguous()
               for k, v in load_file(str(model_dir / WEIGHTS)).items()}
    half = out / "weights.fp16"
    save_file(tensors, str(half), metadata={"format": "pt"})
    del tensors
    data, size = half.read_bytes(), int(chunk_mb * 2**20)
    parts = []
    for i in range(0, len(data), size):
        part = out / f"part-{i // size:02d}"
        part.write_bytes(data[i:i + size])
        parts.append(part)
    manifest = {"name": name, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data),
                "parts": [p.name for p in parts], "source": str(model_dir), "git": state}
    (out / "meta" / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    half.unlink()
    for p in parts:
        print(f"{p}  {p.stat().st_size / 2**20:.1f} MiB")
    return parts


def stash(names: list[str], payload: Path = PAYLOAD, keep: Path = STASH) -> None:
    """Copy the parts and meta that this call carried to `keep` (kept while the machine is warm)."""
    if not names:
        names = [p.name for p in payload.iterdir() if p.is_dir()] if payload.is_dir() else []
    for name in names:
        src, dst = payload / name, keep / name
        dst.mkdir(parents=True, exist_ok=True)
        for item in sorted(src.iterdir()) if src.is_dir() else []:
            if not (dst / item.name).exists():
                (shutil.copytree if item.is_dir() else shutil.copy2)(item, dst / item.name)
        print(f"{name}: stashed {sorted(p.name for p in dst.iterdir())}", flush=True)


def unpack(name: str, dest: Path, payload: Path = PAYLOAD, keep: Path = STASH) -> Path:
    stash([name], payload, keep)
    src = keep / name
    manifest = json.loads((src / "meta" / MANIFEST).read_text())
    missing = [p for p in manifest["parts"] if not (src / p).is_file()]
    if missing:
        raise SystemExit(f"{name}: parts {missing} never arrived (carry .device_payload/{name}/PART "
                         f"in a call while the machine is warm)")
    joined = src / "weights.fp16"
    with open(joined, "wb") as f:
        for p in manifest["parts"]:
            f.write((src / p).read_bytes())
    if sha256(joined) != manifest["sha256"]:
        raise SystemExit(f"{name}: the joined weights do not match the SHA-256 recorded by pack")
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(src / "meta", dest)
    shutil.copy2(joined, dest / WEIGHTS)
    _cast_weights(dest, half=False)
    print(f"{name}: {dest} (float32 weights)", flush=True)
    return dest


def _cast_weights(directory: Path, half: bool) -> None:
    """Every model.safetensors under directory, its floating tensors in float16 or float32."""
    from safetensors.torch import load_file, save_file

    for weights in directory.rglob(WEIGHTS):
        tensors = {k: ((v.half() if half else v.float()) if v.is_floating_point() else v).contiguous()
                   for k, v in load_file(str(weights)).items()}
        save_file(tensors, str(weights), metadata={"format": "pt"})


def send_back(directory: Path, out: Path, name: str, piece: int = PIECE) -> list[Path]:
    """Tar `directory` (its weights cast to float16, in place) into out/NAME.tar.part-NN."""
    import tarfile

    _cast_weights(directory, half=True)
    tar = out / f"{name}.tar"
    with tarfile.open(tar, "w") as t:
        t.add(directory, arcname=name)
    data, pieces = tar.read_bytes(), []
    for i in range(0, len(data), piece):
        pieces.append(out / f"{name}.tar.part-{i // piece:02d}")
        pieces[-1].write_bytes(data[i:i + piece])
    tar.unlink()
    return pieces


def receive(pieces_dir: Path, name: str, dest: Path) -> Path:
    """Join NAME.tar.part-NN from pieces_dir and write its folder at dest, weights in float32."""
    import io
    import tarfile
    import tempfile

    pieces = sorted(pieces_dir.glob(f"{name}.tar.part-*"))
    if not pieces:
        raise SystemExit(f"{pieces_dir}: no {name}.tar.part-* pieces")
    data = b"".join(p.read_bytes() for p in pieces)
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp, tarfile.open(fileobj=io.BytesIO(data)) as t:
        t.extractall(tmp, filter="data")
        _cast_weights(Path(tmp) / name, half=False)
        if dest.exists():
            shutil.rmtree(dest)
        shutil.move(str(Path(tmp) / name), dest)
    print(f"{name}: {dest} (float32 weights)", flush=True)
    return dest


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack", help="here: split a model folder into float16 parts")
    p.add_argument("name")
    p.add_argument("model_dir", type=Path)
    p.add_argument("--chunk-mb", type=float, default=60.0)
    sub.add_parser("state", help="here: record the checkout's commit for the copy (after each commit)")
    s = sub.add_parser("stash", help="there: keep the parts this call carried")
    s.add_argument("names", nargs="*")
    u = sub.add_parser("unpack", help="there: join the parts into a float32 model folder")
    u.add_argument("name")
    u.add_argument("dest", type=Path)
    r = sub.add_parser("receive", help="here: rebuild a folder sent back in pieces")
    r.add_argument("pieces_dir", type=Path)
    r.add_argument("name")
    r.add_argument("dest", type=Path)
    args = parser.parse_args(argv)
    if args.command == "pack":
        from benchmarks.report import write_source_state

        pack(args.name, args.model_dir, args.chunk_mb, state=write_source_state())
    elif args.command == "state":
        from benchmarks.report import write_source_state

        print(write_source_state())
    elif args.command == "stash":
        stash(args.names)
    elif args.command == "receive":
        receive(args.pieces_dir, args.name, args.dest)
    else:
        unpack(args.name, args.dest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
