"""``ldm serve run=RUN_DIR [host=127.0.0.1 port=7860 ...]``: the page over one run.

It binds the port before loading the model (a taken port fails at once), loads the run once,
prints where the page is, and serves until Ctrl-C. Any host other than a loopback address is
said loudly: the page has no login, and whoever reaches it uses this machine and writes into the
run folder.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import sys

import uvicorn

from ldmcore.arguments import parse_options
from ldmcore.errors import ConfigError
from ldmcore.runfolder import RunFolder
from ldmcore.sample import load_for_sampling
from ldmcore.serve.app import create_app
from ldmcore.serve.options import ServeOptions
from ldmcore.serve.service import SamplingService


def serve_command(args: list[str]) -> int:
    if not any(arg.startswith("run=") for arg in args):
        raise ConfigError("ldm serve needs run=RUN_DIR, a trained or imported run (ldm serve "
                          "--help lists the other keys).")
    opts = parse_options(args, ServeOptions)
    run, host = opts.run, opts.host
    sock = _bind(host, opts.port)
    given = opts.model_dump(include={"precision", "threads", "ema"}, exclude_defaults=True)
    settings = [f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in given.items()]
    loaded = load_for_sampling(run, ema=opts.ema, precision=opts.precision, threads=opts.threads)
    service = SamplingService(loaded, RunFolder(run).samples / "serve", opts.max_images,
                              opts.queue, settings)
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    if not _loopback(host):
        print(f"ldm serve: WARNING: listening on {host}, not on this machine alone: anyone who can "
              f"reach port {bound} can sample on this machine and write images into "
              f"{service.root}; there is no login. Use host=127.0.0.1 (the default) and an SSH "
              f"tunnel to reach it from elsewhere.", file=sys.stderr, flush=True)
    print(f"ldm serve: {run} ({', '.join(service.encoders) or 'unconditional'}) at "
          f"http://{shown}:{bound}/ - one sampling at a time, results in {service.root}; "
          f"Ctrl-C stops.", flush=True)
    server = uvicorn.Server(uvicorn.Config(create_app(service), log_level="warning",
                                           access_log=False, lifespan="off",
                                           timeout_graceful_shutdown=5))
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn stops on Ctrl-C, then raises it again: the way to stop
        pass
    finally:
        service.queue.close()
        sock.close()
    print(f"ldm serve: stopped; results are in {service.root}", flush=True)
    return 0


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _bind(host: str, port: int) -> socket.socket:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigError(f"host={host!r} is not an address of this machine ({exc.strerror}); "
                          f"write host=127.0.0.1 (this machine only) or host=0.0.0.0 (every "
                          f"network it is on).") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        taken = exc.errno == errno.EADDRINUSE
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}"
                          f"{'; another program uses that port: pick another with port=N' if taken else ''}"
                          f".") from None
    return sock
