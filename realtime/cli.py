"""`realtime`: run the emotion pipeline and read its stream.

  realtime replay SESSION.mp4 --model BUNDLE --out OUT.jsonl [--realtime] [--report REPORT.html]
  realtime serve [--model BUNDLE] [--camera CAM] [--microphone MIC] [--endpoint ENDPOINT] [--jsonl FILE]
  realtime record OUT.mp4 [--camera CAM] [--microphone MIC] [--duration SECONDS]
  realtime devices
  realtime keys --out DIR
  realtime infer --model BUNDLE [--endpoint ipc:///tmp/realtime-infer.sock]   (sessions: --backend service)
  realtime listen [--endpoint tcp://127.0.0.1:5555] [--jsonl FILE]
  realtime describe --model BUNDLE [--json]
  realtime dashboard [--endpoint tcp://127.0.0.1:5555] [--port 8765]
  realtime report OUT.jsonl --html REPORT.html [--model BUNDLE]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


CAMERA_HELP = ("camera index, video file, URL, or screen[:X,Y,W,H]: the X screen, or its region W x H "
               "pixels at X,Y (e.g. a call's gallery view); '' for none (default [capture] camera)")
MICROPHONE_HELP = ("microphone index or name fragment, or monitor: what this computer plays (the "
                   "PulseAudio/PipeWire monitor of the default output) (default [capture] microphone)")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, default=None,
                        help="settings file (default: config.toml of the checkout, else built-in defaults)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one setting, e.g. --set asr.model=base (repeatable)")


def _model_options(parser: argparse.ArgumentParser) -> None:
    """What replay and serve share: the bundle, where it runs, and where the stream goes."""
    from common.devices import DEVICES
    from engines.backends import BACKENDS

    parser.add_argument("--model", type=Path, help="model bundle directory (trainer export); default [model] bundle")
    parser.add_argument("--endpoint", help="publish on this ZeroMQ endpoint (default [stream] endpoint)")
    parser.add_argument("--backend", choices=BACKENDS,
                        help="inference backend (default [model] backend; auto: TensorRT, else PyTorch on CUDA, "
                             "else ONNX Runtime on the CPU; triton: a Triton server at --triton-url; service: "
                             "`realtime infer` at --service-endpoint)")
    parser.add_argument("--device", choices=DEVICES, help="where the model runs (default [model] device)")
    parser.add_argument("--triton-url", metavar="HOST:PORT",
                        help="with --backend triton: the Triton server's HTTP endpoint (default [model] triton_url)")
    parser.add_argument("--service-endpoint", metavar="ENDPOINT",
                        help="with --backend service: where `realtime infer` answers (default [model] "
                             "service_endpoint)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="realtime",
        description="Multimodal emotion recognition over speech, transcript and face, "
                    "published as a ZeroMQ stream (protocol: realtime/schema/emotion-stream-v1.json).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    # Each command: its arguments in _add_NAME, what it does in cmd_NAME (below).
    for add in (_add_replay, _add_serve, _add_infer, _add_record, _add_describe, _add_keys, _add_devices,
                _add_listen, _add_dashboard, _add_report):
        add(sub)
    return parser


def _add_replay(sub) -> None:
    rp = sub.add_parser("replay", help="run the pipeline over a recorded session (offline, deterministic)",
                        description="Run every stage over a recorded audio/video file and publish each "
                                    "utterance's emotions; nothing is dropped, and the same file gives "
                                    "the same probabilities every run.")
    rp.add_argument("media", type=Path, help="recorded session (.mp4, .mkv, .wav, ... anything FFmpeg reads)")
    rp.add_argument("--out", type=Path, help="write one JSON object per utterance to this JSONL file")
    rp.add_argument("--all-messages", action="store_true",
                    help="with --out: write every published message (transcripts, window updates, "
                         "status), not only the utterance results")
    _model_options(rp)
    rp.add_argument("--wait-subscribers", type=int, metavar="N",
                    help="hold the first message until N subscribers are connected")
    rp.add_argument("--realtime", action="store_true",
                    help="read the media at its own speed (as if live) instead of as fast as the stages go")
    rp.add_argument("--report", type=Path, metavar="REPORT.html",
                    help="at the end, write the session's self-contained HTML report (see `realtime report`)")
    _dashboard_options(rp, "while replaying (waits for it to subscribe; pair with --realtime to watch)")
    rp.add_argument("--quiet", action="store_true", help="do not print messages as they are published")
    _common(rp)


def _add_serve(sub) -> None:
    sp = sub.add_parser("serve", help="live: webcam + microphone -> emotion stream",
                        description="Capture a camera and a microphone, transcribe, and publish emotions "
                                    "until Ctrl-C. Stages that die are restarted; a device that cannot be "
                                    "opened is an error.")
    sp.add_argument("--camera", help=CAMERA_HELP)
    sp.add_argument("--microphone", help=MICROPHONE_HELP)
    sp.add_argument("--camera-loop", action="store_true", default=None,
                    help="a video file --camera starts again at its end instead of ending "
                         "(default [capture] camera_loop)")
    sp.add_argument("--jsonl", type=Path, help="also write every published message to this JSONL file")
    _model_options(sp)
    sp.add_argument("--duration", type=float, default=0.0, help="stop after this many seconds (0: Ctrl-C)")
    _dashboard_options(sp, "while serving (waits for it to subscribe)")
    sp.add_argument("--quiet", action="store_true", help="do not print messages as they are published")
    _common(sp)


def _add_infer(sub) -> None:
    ip = sub.add_parser("infer", help="the inference service many sessions of this machine share",
                        description="Load the bundle's text encoder and student once and answer the fusion "
                                    "stage of every session run with --backend service, batching requests "
                                    "that arrive together across sessions, until Ctrl-C or SIGTERM.")
    ip.add_argument("--model", type=Path, help="model bundle directory; default [model] bundle")
    ip.add_argument("--endpoint", help="where to answer (ZeroMQ ROUTER, bound; default [model] service_endpoint)")
    ip.add_argument("--threads", type=int, help="ONNX Runtime threads (default [model] threads)")
    _common(ip)


def _add_record(sub) -> None:
    cp = sub.add_parser("record", help="save a live session (camera + microphone) for replay",
                        description="Record the camera and the microphone into one file (mp4) that "
                                    "`realtime replay` reads, until Ctrl-C or --duration.")
    cp.add_argument("out", type=Path, help="file to write (.mp4)")
    cp.add_argument("--camera", help=CAMERA_HELP)
    cp.add_argument("--microphone", help=MICROPHONE_HELP)
    cp.add_argument("--duration", type=float, default=0.0, help="stop after this many seconds (0: Ctrl-C)")
    cp.add_argument("--fps", type=float, default=15.0, help="video frame rate written")
    _common(cp)


def _add_describe(sub) -> None:
    dp = sub.add_parser("describe", help="verify a bundle and print its model card's summary",
                        description="Check every file of the bundle against its sha256 and print one line: "
                                    "labels, what each branch learnt from, test scores (card.json).")
    dp.add_argument("--model", type=Path, help="model bundle directory; default [model] bundle")
    dp.add_argument("--json", action="store_true", help="print the whole card.json instead")
    _common(dp)


def _add_keys(sub) -> None:
    kp = sub.add_parser("keys", help="create CURVE keys to publish the stream beyond this machine",
                        description="Write a server and a client key pair (ZeroMQ certificates; secret files "
                                    "mode 0600) and DIR/clients/ with the client's public key. The server "
                                    "uses [stream] curve_secret_key = DIR/server.key_secret and curve_clients "
                                    "= DIR/clients; a listener uses --curve-key DIR/client.key_secret "
                                    "--server-key DIR/server.key.")
    kp.add_argument("--out", type=Path, required=True, help="directory for the key files")


def _add_devices(sub) -> None:
    sub.add_parser("devices", help="list cameras, microphones, the screen and the monitor",
                   description="Cameras OpenCV can open (indices 0-9), PyAudio input devices, the screen "
                               "that --camera screen grabs (its size) and the monitor --microphone monitor "
                               "records (its source), or why they cannot be captured.")


def _add_listen(sub) -> None:
    lp = sub.add_parser("listen", help="subscribe to an emotion stream and print it",
                        description="Print every message of an emotion stream until Ctrl-C.")
    lp.add_argument("--endpoint", default=None, help="stream to read (default [stream] endpoint)")
    lp.add_argument("--topic", default="", help="topic prefix to subscribe to (default: all)")
    lp.add_argument("--jsonl", type=Path, help="append raw messages to this file instead of pretty-printing")
    lp.add_argument("--count", type=int, default=0, help="exit after this many messages (0: never)")
    lp.add_argument("--curve-key", type=Path, metavar="FILE",
                    help="an encrypted stream: this client's secret key file (realtime keys: client.key_secret)")
    lp.add_argument("--server-key", type=Path, metavar="FILE",
                    help="an encrypted stream: the server's public key file (realtime keys: server.key)")
    _common(lp)


def _add_dashboard(sub) -> None:
    dp = sub.add_parser("dashboard", help="show an emotion stream live in the browser",
                        description="Serve a web page on 127.0.0.1 that draws the emotion stream as it "
                                    "arrives (current probabilities, timeline, transcript, modalities, "
                                    "latency), until Ctrl-C. The page needs no network.")
    dp.add_argument("--endpoint", default=None, help="stream to show (default [stream] endpoint)")
    dp.add_argument("--port", type=int, default=DASHBOARD_PORT,
                    help=f"port of the page on 127.0.0.1 (default {DASHBOARD_PORT}; 0: any free port)")
    _common(dp)


def _add_report(sub) -> None:
    hp = sub.add_parser("report", help="write a finished session as one self-contained HTML page",
                        description="Turn the JSONL of a session (realtime replay --out [--all-messages], "
                                    "realtime listen --jsonl) into a static HTML page: timeline, transcript "
                                    "with emotions, per-label summary, model card. CSS and JS are inline: "
                                    "it opens with no network.")
    hp.add_argument("jsonl", type=Path, help="messages of the session, one JSON object per line")
    hp.add_argument("--html", type=Path, required=True, metavar="REPORT.html", help="page to write")
    hp.add_argument("--model", type=Path, default=None,
                    help="bundle whose model card summary (else labels and thresholds) the page shows "
                         "(default [model] bundle, if set)")
    hp.add_argument("--session", default=None,
                    help="which session of the file (default: the last; listen --jsonl appends sessions)")
    _common(hp)
    

DASHBOARD_PORT = 8765


def _dashboard_options(parser: argparse.ArgumentParser, when: str) -> None:
    parser.add_argument("--dashboard", action="store_true",
                        help=f"also serve the live dashboard on 127.0.0.1 {when}")
    parser.add_argument("--dashboard-port", type=int, default=DASHBOARD_PORT, metavar="PORT",
                        help=f"port of --dashboard (default {DASHBOARD_PORT}; 0: any free port)")


def _check_port(port: int) -> None:
    from common.errors import UserError

    if not 0 <= port <= 65535:
        raise UserError(f"port {port}: expected 0-65535")


def start_dashboard(config, port: int):
    """The dashboard in a thread of this command (replay or serve --dashboard); prints its address."""
    from realtime.dashboard import DashboardThread, url

    _check_port(port)
    dashboard = DashboardThread(config.stream.endpoint, port)
    bound = dashboard.start()
    # Its subscription must be in before the first message, or the page misses the start.
    config.stream.wait_subscribers = max(config.stream.wait_subscribers, 1)
    print(f"realtime: dashboard on {url(bound)} (stream {config.stream.endpoint})", file=sys.stderr, flush=True)
    return dashboard


def format_message(body: dict) -> str:
    """One human-readable line for a stream message."""
    head = f"[{body.get('session')}#{body.get('seq')}]"
    kind = body.get("type")
    if kind == "status":
        return f"{head} status: {body.get('state')}"
    span = f"{body['start']:7.2f}-{body['end']:7.2f}s"
    if kind == "transcript":
        return f"{head} {span} transcript: \"{body['text']}\""
    top = sorted(body["labels"].items(), key=lambda kv: -kv[1])[:3]
    probs = "  ".join(f"{label} {p:.2f}" for label, p in top)
    text = f"  \"{body['text']}\"" if kind == "utterance" else ""
    return f"{head} {span} {kind:9s} {probs}  ({'+'.join(body['modalities'])}){text}"


def load_settings(args, needs_model: bool = False, **flags):
    """config.toml (or --config), then --set, then the command's own flags (KEY=value, None = not given)."""
    from common.errors import UserError
    from realtime.config import load_config

    overrides = list(args.overrides)
    for key, value in flags.items():
        if value is not None:
            overrides.append(f"{key.replace('__', '.')}={json.dumps(str(value) if isinstance(value, Path) else value)}")
    config = load_config(args.config, overrides)
    if needs_model and not config.model.bundle:
        raise UserError("no model: pass --model BUNDLE or set [model] bundle in config.toml")
    return config


PRINTED = ("utterance", "status")  # what replay and serve print; the other types are on the stream


def print_results(args):
    """Print utterance results and status as they are published; window updates and
    transcripts are on the stream too (`realtime listen` shows them)."""
    if args.quiet:
        return None
    return lambda body: body["type"] in PRINTED and print(format_message(body), flush=True)


def cmd_replay(args) -> int:
    from common.errors import UserError
    from realtime.pipeline import replay

    config = load_settings(args, needs_model=True, model__bundle=args.model, stream__endpoint=args.endpoint,
                           model__backend=args.backend, model__device=args.device,
                           model__triton_url=args.triton_url, model__service_endpoint=args.service_endpoint,
                           stream__wait_subscribers=args.wait_subscribers)
    if args.report and not args.report.parent.is_dir():  # say so now, not after the whole replay
        raise UserError(f"--report {args.report}: no such folder {args.report.parent}")
    dashboard = start_dashboard(config, args.dashboard_port) if args.dashboard else None
    messages: list[dict] = []
    printer = print_results(args)

    def on_message(body: dict) -> None:
        if args.report:
            messages.append(body)
        if printer:
            printer(body)

    try:
        # The report reads window updates; printing does not, and without it (or --all-messages,
        # the dashboard or another subscriber) fusion need not score them.
        utterances = replay(args.media, config, args.out, on_message=on_message,
                            all_messages=args.all_messages, realtime=args.realtime,
                            on_message_types=None if args.report else PRINTED)
    finally:
        if dashboard:
            dashboard.stop()
    print(f"{len(utterances)} utterances" + (f" written to {args.out}" if args.out else ""), file=sys.stderr)
    if args.report:
        from realtime.report import write_report_from

        write_report_from(messages, args.report, config.model.bundle, source=args.media.name)
        print(f"report written to {args.report}", file=sys.stderr)
    return 0


def cmd_serve(args) -> int:
    from realtime.pipeline import serve

    config = load_settings(args, needs_model=True, model__bundle=args.model, capture__camera=args.camera,
                           capture__microphone=args.microphone, capture__camera_loop=args.camera_loop,
                           stream__endpoint=args.endpoint, model__backend=args.backend, model__device=args.device,
                           model__triton_url=args.triton_url, model__service_endpoint=args.service_endpoint)
    dashboard = start_dashboard(config, args.dashboard_port) if args.dashboard else None
    try:
        utterances = serve(config, config.capture, args.jsonl, on_message=print_results(args),
                           duration_s=args.duration, on_message_types=PRINTED)
    finally:
        if dashboard:
            dashboard.stop()
    print(f"{len(utterances)} utterances", file=sys.stderr)
    return 0


def cmd_dashboard(args) -> int:
    from realtime.dashboard import run, url

    _check_port(args.port)
    endpoint = load_settings(args, stream__endpoint=args.endpoint).stream.endpoint
    ready = lambda port: print(f"dashboard on {url(port)} (stream {endpoint}; Ctrl-C to stop)",
                               file=sys.stderr, flush=True)
    try:
        run(endpoint, args.port, on_ready=ready)
    except KeyboardInterrupt:
        pass
    return 0


def cmd_report(args) -> int:
    from realtime.report import write_report

    bundle = args.model if args.model is not None else (load_settings(args).model.bundle or None)
    summary = write_report(args.jsonl, args.html, bundle, args.session)
    if len(summary["sessions"]) > 1 and args.session is None:
        print(f"{args.jsonl} holds {len(summary['sessions'])} sessions; reported the last, {summary['session']} "
              "(--session picks another)", file=sys.stderr)
    print(f"report of {summary['session']} ({summary['utterances']} utterances) written to {args.html}",
          file=sys.stderr)
    return 0


def cmd_infer(args) -> int:
    import signal

    from engines.service import InferenceService

    config = load_settings(args, needs_model=True, model__bundle=args.model,
                           model__service_endpoint=args.endpoint, model__threads=args.threads)
    model = config.model
    service = InferenceService(model.bundle, model.service_endpoint, model.service_gather_ms,
                               model.service_max_batch, model.threads)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: service.stop())
    print(f"realtime: inference service for {model.bundle} on {model.service_endpoint} (Ctrl-C to stop)",
          file=sys.stderr, flush=True)
    service.serve()
    print(f"realtime: inference service stopped; batches {json.dumps(service.stats())}", file=sys.stderr)
    return 0


def cmd_record(args) -> int:
    import signal
    import threading

    from realtime.record import record

    config = load_settings(args, capture__camera=args.camera, capture__microphone=args.microphone)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    result = record(args.out, config.capture, args.duration, args.fps, stop,
                    on_ready=lambda: print(f"recording to {args.out} (Ctrl-C to stop)", file=sys.stderr, flush=True))
    print(f"wrote {result['path']}: {result['seconds']:.1f} s of audio, {result['frames']} frames", file=sys.stderr)
    return 0


def cmd_describe(args) -> int:
    from engines.card import model_line, read_card

    bundle = load_settings(args, needs_model=True, model__bundle=args.model).model.bundle
    print(json.dumps(read_card(bundle), indent=2) if args.json else model_line(bundle))
    return 0


def cmd_devices(args) -> int:
    from realtime.stages.source import list_devices

    print(json.dumps(list_devices(), indent=2))
    return 0


def cmd_listen(args) -> int:
    import signal

    import zmq

    from common.errors import UserError
    from realtime import protocol
    from realtime.config import load_config

    endpoint = args.endpoint or load_config(args.config, args.overrides).stream.endpoint
    # Ctrl-C (SIGINT) ends the listener even where it was started in the background of a
    # script, which leaves SIGINT ignored, and that ignoring is inherited by every child.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt_string(zmq.SUBSCRIBE, args.topic)
    if args.curve_key or args.server_key:
        if not (args.curve_key and args.server_key):
            raise UserError("--curve-key and --server-key go together")
        from realtime.security import client_keys

        client_keys(sock, str(args.curve_key), str(args.server_key))
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


def cmd_keys(args) -> int:
    from realtime.security import generate_keys

    files = generate_keys(args.out)
    print(f"wrote keys to {args.out}\n"
          f"server: --set stream.curve_secret_key={files['server_secret']} "
          f"--set stream.curve_clients={files['clients']}\n"
          f"client: realtime listen --curve-key {files['client_secret']} --server-key {files['server_public']}",
          file=sys.stderr)
    return 0


# The commands that run stage processes: their fork server is started before anything else is
# imported (realtime.forkserver), since its own imports are what the first stage waits for.
STAGE_COMMANDS = ("replay", "serve")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] and argv[0] in STAGE_COMMANDS and not {"-h", "--help"} & set(argv):
        from realtime.forkserver import stage_processes

        stage_processes()
    args = build_parser().parse_args(argv)
    from common.errors import UserError

    try:
        commands = {"replay": cmd_replay, "serve": cmd_serve, "record": cmd_record, "devices": cmd_devices,
                    "listen": cmd_listen, "describe": cmd_describe, "dashboard": cmd_dashboard, "report": cmd_report,
                    "keys": cmd_keys, "infer": cmd_infer}
        return commands[args.command](args)
    except UserError as exc:  # bad input: one line; anything else is a bug and keeps its traceback
        print(f"realtime {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
