"""`python -m workers` / `attune worker`: run one stream worker until SIGTERM or SIGINT.

The first signal stops reading; the batch in flight is finished within worker_grace_seconds, or else
handed back (its entries stay pending and the partition lease is released, so another worker claims
them). A second signal exits at once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys

from service import store as store_mod
from service.embedded import url_for
from service.settings import get_settings
from workers.consumer import Worker, tune_gc

log = logging.getLogger("attune.worker")


async def main() -> int:
    settings = get_settings()
    url = settings.redis_url or url_for(settings.data_dir)
    client = store_mod.connect(url, socket_timeout=settings.worker_block_ms / 1000 + 10)
    worker = Worker(settings, client)
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    signals = {"n": 0}

    def on_signal(sig: signal.Signals) -> None:
        signals["n"] += 1
        if signals["n"] > 1:
            log.warning("second %s: exiting at once", sig.name)
            os._exit(1)
        log.info("%s: stopping; finishing the batch in flight (grace %.0f s)", sig.name, settings.worker_grace_seconds)
        worker.stopping.set()

        def overdue() -> None:
            log.warning("grace period over: handing the batch back")
            if task is not None:
                task.cancel()

        loop.call_later(settings.worker_grace_seconds, overdue)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        run = asyncio.ensure_future(worker.run())
        try:
            await asyncio.shield(run)
        except store_mod.UnsupportedRedis as exc:
            log.error("%s", exc)
            return 2
        except asyncio.CancelledError:
            run.cancel()
            try:
                await asyncio.wait_for(run, 2)
            except (asyncio.CancelledError, TimeoutError):
                pass
            await worker.release_all()
    finally:
        await client.aclose()
    return 0


if __name__ == "__main__":
    from service.cli import refuse_bad_settings  # noqa: PLC0415

    if refuse_bad_settings():
        sys.exit(2)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    tune_gc()
    sys.exit(asyncio.run(main()))
