"""``registry serve`` and ``registry validate``.

``serve`` runs uvicorn on an app built here from flags over the environment, so flags
win without rewriting the environment, and so the exit status can say why it stopped:
0 after a signal, 1 when the manifest is invalid (one line per problem, as ``validate``
prints them, and nothing served) or strict start-up failed, 3 when start-up never
finished.
"""

from __future__ import annotations

import argparse
import math
import signal
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError

from registry import __version__
from registry.settings import Settings

if TYPE_CHECKING:
    import socket

    import uvicorn
    from starlette.types import ASGIApp

EXIT_OK, EXIT_INVALID, EXIT_MODELS_FAILED, EXIT_STARTUP_FAILED = 0, 1, 1, 3


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        settings = _settings(args)
    except ValidationError as exc:
        _print_problems(_setting_problems(exc))
        return EXIT_INVALID
    if args.command == "serve":
        return serve(settings)
    return validate(settings, load=args.load)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="registry",
        description="Serve the models a manifest lists, or check a manifest and its weights.",
    )
    parser.add_argument("--version", action="version", version=f"registry {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="serve the manifest over HTTP")
    serve.add_argument("--manifest", type=Path, help="manifest path (REGISTRY_MANIFEST)")
    serve.add_argument("--weights-dir", type=Path, help="weights root (REGISTRY_WEIGHTS_DIR)")
    serve.add_argument("--host", help="bind address (REGISTRY_HOST)")
    serve.add_argument("--port", type=int, help="bind port (REGISTRY_PORT)")
    serve.add_argument(
        "--grpc-port", type=int, help="Open Inference Protocol over gRPC (REGISTRY_GRPC_PORT)"
    )

    validate = commands.add_parser(
        "validate", help="check a manifest and its weight files; exit 0 when valid"
    )
    validate.add_argument("manifest", type=Path)
    validate.add_argument("--weights-dir", type=Path, help="weights root (REGISTRY_WEIGHTS_DIR)")
    validate.add_argument("--load", action="store_true", help="also load and warm up every version")
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    flags = {
        "manifest": args.manifest,
        "weights_dir": args.weights_dir,
        "host": getattr(args, "host", None),
        "port": getattr(args, "port", None),
        "grpc_port": getattr(args, "grpc_port", None),
    }
    return Settings(**{key: value for key, value in flags.items() if value is not None})


def _setting_problems(error: ValidationError) -> list[str]:
    """One line per setting that does not hold, named as the environment names it (a flag
    of the same name sets it too), instead of pydantic's traceback."""
    return [
        f"setting REGISTRY_{'_'.join(map(str, problem['loc'])).upper()}: {problem['msg']} "
        f"(got {problem['input']!r})"
        for problem in error.errors(include_url=False)
    ]


def serve(settings: Settings) -> int:
    from registry.app import create_app
    from registry.logs import configure_logging

    if problems := manifest_problems(settings.manifest):
        _print_problems(problems)
        return EXIT_INVALID
    configure_logging(settings)
    exit_code = EXIT_OK

    def on_fatal() -> None:
        nonlocal exit_code
        exit_code = EXIT_MODELS_FAILED
        server.should_exit = True

    server = _server_class()(uvicorn_config(create_app(settings, on_fatal=on_fatal), settings))
    with _signals_end_cleanly():
        server.run()
    return exit_code if server.started else EXIT_STARTUP_FAILED


def _server_class() -> type[uvicorn.Server]:
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, which also tells gRPC when shutdown begins.

        NOTE: uvicorn runs the application's shutdown only once its HTTP connections have
        drained; gRPC must refuse new calls from the signal on, as HTTP does, and drain
        beside it, not after it.
        """

        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            grpc_server = getattr(getattr(self.config.app, "state", None), "grpc", None)
            if grpc_server is not None:
                grpc_server.begin_stop()
            await super().shutdown(sockets)

    return Server


def uvicorn_config(app: ASGIApp, settings: Settings) -> uvicorn.Config:
    """The server's own limits, from settings: drain, connections, keep-alive, headers.

    NOTE: slow request bodies are bounded by the app itself (``REGISTRY_BODY_TIMEOUT_S``),
    so through either door; these apply to ``registry serve`` (uvicorn's own flags, such
    as ``--limit-concurrency``, set them for ``uvicorn ... --factory``).
    """
    import uvicorn

    from registry.header_deadline import with_header_timeout

    return uvicorn.Config(
        app,
        http=with_header_timeout(settings.header_timeout_s),
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=math.ceil(settings.drain_timeout_s),
        limit_concurrency=settings.max_connections,
        timeout_keep_alive=settings.keep_alive_timeout_s,
        server_header=False,
    )


def manifest_problems(manifest: Path) -> list[str]:
    """What is wrong with the manifest itself, one line each; its weights are not read.

    NOTE: ``serve`` checks this before uvicorn starts, so an invalid manifest is a few
    clear lines and exit 1, not a start-up traceback. Weight files are the start-up
    loader's business: with ``REGISTRY_STRICT_STARTUP=false`` a missing one must not stop
    the rest being served.
    """
    from registry.validation import read_manifest

    return read_manifest(manifest, prefix=f"invalid manifest {str(manifest)!r}: ")[1]


def _print_problems(problems: Sequence[str]) -> None:
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)  # noqa: T201


@contextmanager
def _signals_end_cleanly() -> Iterator[None]:
    """Let SIGTERM/SIGINT end ``serve`` with status 0 after uvicorn's graceful shutdown.

    NOTE: uvicorn re-raises the signal it caught once it has shut down, which with the
    default handlers turns a clean drain into death by signal (143) or KeyboardInterrupt.
    """
    handled = (signal.SIGTERM, signal.SIGINT)
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in handled}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def validate(settings: Settings, *, load: bool) -> int:
    from registry.validation import validate_manifest

    problems = validate_manifest(settings, load=load)
    _print_problems(problems)
    if problems:
        return EXIT_INVALID
    print(f"ok: {settings.manifest} is valid")  # noqa: T201
    return EXIT_OK
