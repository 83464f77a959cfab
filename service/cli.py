"""The `attune` command: serve, worker, run (everything, as `make run` does), keys, standin."""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path


def _serve(args: argparse.Namespace) -> int:
    import uvicorn  # noqa: PLC0415

    from service.embedded import EmbeddedRedis  # noqa: PLC0415
    from service.http import CoalescingHttpTools  # noqa: PLC0415
    from service.settings import get_settings  # noqa: PLC0415

    settings = get_settings()
    embedded = None
    if settings.redis_url and (problem := _unsupported_redis(settings.redis_url)):
        print(f"[attune] {problem}", file=sys.stderr)
        return 2
    if not settings.redis_url:
        # Start it here, once, so every API process of this command shares it.
        embedded = EmbeddedRedis(settings.data_dir)
        os.environ["ATTUNE_REDIS_URL"] = embedded.start()
        if embedded.process is None:
            print(f"[attune] the embedded Redis at {embedded.url} was already running; reusing it "
                  "(this server leaves it running)", file=sys.stderr, flush=True)
        get_settings.cache_clear()
    prom_dir = None
    if args.workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        prom_dir = tempfile.mkdtemp(prefix="attune-prom-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = prom_dir
    try:
        uvicorn.run(
            "service.app:app_from_env", factory=True, host=args.host or settings.host, port=args.port or settings.port,
            workers=args.workers, loop="uvloop", http=CoalescingHttpTools, access_log=False, log_level="info",
            timeout_graceful_shutdown=10,
        )
    finally:
        if embedded is not None:
            embedded.stop()
        if prom_dir:
            shutil.rmtree(prom_dir, ignore_errors=True)
    return 0


def _unsupported_redis(url: str) -> str | None:
    """Why the server at `url` cannot hold Attune's data (said once, before any API process starts)."""
    from service import store as store_mod  # noqa: PLC0415

    async def go() -> str | None:
        client = store_mod.connect(url)
        try:
            await store_mod.check_server(client)
        except store_mod.UnsupportedRedis as exc:
            return str(exc)
        finally:
            await client.aclose()
        return None

    return asyncio.run(go())


def settings_problems() -> list[str]:
    """What is wrong with the ATTUNE_* variables, one line each, said before anything starts (also by the
    entry points run without `attune`: `python -m workers`, `python -m service.supervisor`)."""
    from service.settings import SettingsError, get_settings  # noqa: PLC0415

    try:
        get_settings()
    except SettingsError as exc:
        return exc.problems
    return []


def refuse_bad_settings() -> bool:
    """Print settings_problems() to stderr, one line each; whether there were any (the caller exits 2)."""
    problems = settings_problems()
    for line in problems:
        print(f"[attune] {line}", file=sys.stderr)
    return bool(problems)


def _exec_module(module: str, extra: Sequence[str]) -> int:
    os.execv(sys.executable, [sys.executable, "-m", module, *extra])
    return 0  # not reached


def _keys_create(args: argparse.Namespace) -> int:
    from service import store as store_mod  # noqa: PLC0415
    from service.auth import create_key  # noqa: PLC0415
    from service.embedded import url_for  # noqa: PLC0415
    from service.errors import AttuneError  # noqa: PLC0415
    from service.settings import get_settings, redact_url  # noqa: PLC0415

    settings = get_settings()
    url = settings.redis_url or url_for(settings.data_dir)

    async def go() -> dict[str, object]:
        client = store_mod.connect(url)
        try:
            store = store_mod.Store(client, settings.partitions, settings.dedup_ttl_seconds)
            return await create_key(store, args.app, [s.strip() for s in args.scopes.split(",") if s.strip()])
        finally:
            await client.aclose()

    try:
        created = asyncio.run(go())
    except AttuneError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        if exc.status == 503:
            print(f"(is Redis running at {redact_url(url)}? start it with `make run`, "
                  "or set ATTUNE_REDIS_URL)", file=sys.stderr)
        return 2
    import json  # noqa: PLC0415

    print(json.dumps(created, indent=2))
    print("The key is shown once; it is stored only as a hash.", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="attune", description="Online preference learning for role-play on M2-her.")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="start the HTTP API (against ATTUNE_REDIS_URL, or an embedded Redis)")
    serve.add_argument("--workers", type=int, default=int(os.environ.get("ATTUNE_API_PROCESSES", "1")),
                       help="API processes (default 1)")
    serve.add_argument("--host", default=None)
    serve.add_argument("--port", type=int, default=None)
    sub.add_parser("worker", help="start one stream worker")
    sub.add_parser("run", help="everything on one machine: embedded Redis, API, a worker, the M2-her stand-in")
    # Listed for `attune --help`; main() hands its arguments to the stand-in's own parser.
    sub.add_parser("standin", help="start the offline M2-her stand-in server (`attune standin --help`)")
    keys = sub.add_parser("keys", help="manage API keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    create = keys_sub.add_parser("create", help="create an app key (printed once)")
    create.add_argument("--app", required=True)
    create.add_argument("--scopes", required=True, help="comma-separated: ingest,read,condition,manage")
    return parser


# A command that is a module's own program with its own options: `attune standin --host 0.0.0.0` reaches the
# stand-in's parser whole (an argparse REMAINDER positional refused every option given to it).
PROGRAMS = {"standin": "service.standin"}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in PROGRAMS:
        return _exec_module(PROGRAMS[argv[0]], argv[1:])
    args = build_parser().parse_args(argv)
    if args.command in ("serve", "worker", "run", "keys") and refuse_bad_settings():
        return 2
    if args.command == "serve":
        return _serve(args)
    if args.command == "worker":
        return _exec_module("workers", [])
    if args.command == "run":
        return _exec_module("service.supervisor", [])
    if args.command == "keys":
        return _keys_create(args)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
