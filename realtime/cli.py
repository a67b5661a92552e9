"""`realtime`: run the emotion pipeline and read its stream.

  realtime replay SESSION.mp4 --model BUNDLE --out OUT.jsonl
  realtime listen [--endpoint tcp://127.0.0.1:5555] [--jsonl FILE]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, default=None,
                        help="settings file (default: config.toml of the checkout, else built-in defaults)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one setting, e.g. --set asr.model=base (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="realtime",
        description="Multimodal emotion recognition over speech, transcript and face, "
                    "published as a ZeroMQ stream (protocol: realtime/schema/emotion-stream-v1.json).",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    rp = sub.add_parser("replay", help="run the pipeline over a recorded session (offline, deterministic)",
                        description="Run every stage over a recorded audio/video file and publish each "
                                    "utterance's emotions; nothing is dropped, and the same file gives "
                                    "the same probabilities every run.")
    rp.add_argument("media", type=Path, help="recorded session (.mp4, .mkv, .wav, ... anything FFmpeg reads)")
    rp.add_argument("--model", type=Path, help="model bundle directory (trainer export); default [model] bundle")
    rp.add_argument("--out", type=Path, help="write one JSON object per utterance to this JSONL file")
    rp.add_argument("--endpoint", help="publish on this ZeroMQ endpoint (default [stream] endpoint)")
    rp.add_argument("--backend", choices=["auto", "onnxruntime"], help="inference backend")
    rp.add_argument("--wait-subscribers", type=int, metavar="N",
                    help="hold the first message until N subscribers are connected")
    rp.add_argument("--quiet", action="store_true", help="do not print messages as they are published")
    _common(rp)

    lp = sub.add_parser("listen", help="subscribe to an emotion stream and print it",
                        description="Print every message of an emotion stream until Ctrl-C.")
    lp.add_argument("--endpoint", default=None, help="stream to read (default [stream] endpoint)")
    lp.add_argument("--topic", default="", help="topic prefix to subscribe to (default: all)")
    lp.add_argument("--jsonl", type=Path, help="append raw messages to this file instead of pretty-printing")
    lp.add_argument("--count", type=int, default=0, help="exit after this many messages (0: never)")
    _common(lp)
    return parser


def format_message(body: dict) -> str:
    """One human-readable line for a stream message."""
    if body.get("type") != "utterance":
        return f"[{body.get('session')}#{body.get('seq')}] status: {body.get('state')}"
    top = sorted(body["labels"].items(), key=lambda kv: -kv[1])[:3]
    probs = "  ".join(f"{label} {p:.2f}" for label, p in top)
    return (f"[{body['session']}#{body['seq']}] {body['start']:7.2f}-{body['end']:7.2f}s "
            f"{probs}  ({'+'.join(body['modalities'])})  \"{body['text']}\"")


def cmd_replay(args) -> int:
    from realtime.config import load_config
    from realtime.pipeline import replay

    overrides = list(args.overrides)
    if args.model:
        overrides.append(f"model.bundle={json.dumps(str(args.model))}")
    if args.endpoint:
        overrides.append(f"stream.endpoint={json.dumps(args.endpoint)}")
    if args.backend:
        overrides.append(f"model.backend={json.dumps(args.backend)}")
    if args.wait_subscribers is not None:
        overrides.append(f"stream.wait_subscribers={args.wait_subscribers}")
    config = load_config(args.config, overrides)
    if not config.model.bundle:
        raise ValueError("no model: pass --model BUNDLE or set [model] bundle in config.toml")
    show = None if args.quiet else (lambda body: print(format_message(body), flush=True))
    utterances = replay(args.media, config, args.out, on_message=show)
    print(f"{len(utterances)} utterances" + (f" written to {args.out}" if args.out else ""), file=sys.stderr)
    return 0


def cmd_listen(args) -> int:
    import zmq

    from realtime import protocol
    from realtime.config import load_config

    endpoint = args.endpoint or load_config(args.config, args.overrides).stream.endpoint
    ctx = zmq.Context()
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt_string(zmq.SUBSCRIBE, args.topic)
    sock.connect(endpoint)
    out = args.jsonl.open("a") if args.jsonl else None
    print(f"listening on {endpoint} (Ctrl-C to stop)", file=sys.stderr)
    seen = 0
    try:
        while not args.count or seen < args.count:
            try:
                _, body = protocol.decode(sock.recv_multipart())
            except ValueError as exc:
                print(f"skipped a malformed message: {exc}", file=sys.stderr)
                continue
            seen += 1
            if out:
                out.write(json.dumps(body, ensure_ascii=False) + "\n")
                out.flush()
            else:
                print(format_message(body), flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        if out:
            out.close()
        ctx.destroy(linger=0)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from engines.bundle import BundleError
    from engines.media import MediaError
    from engines.settings import ConfigError
    from realtime.pipeline import PipelineError

    try:
        return {"replay": cmd_replay, "listen": cmd_listen}[args.command](args)
    except (BundleError, MediaError, ConfigError, PipelineError, ValueError) as exc:
        print(f"realtime {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
