"""A served API process tunes its garbage collector once started (service/app.tune_gc); an app made
inside another program (the tests) leaves that program's collector alone. Run in a child process, so
this test process's own collector is never touched."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import make_settings

ROOT = Path(__file__).resolve().parents[2]

CHILD = """
import asyncio, gc, json, sys
from service.app import GC_YOUNG_THRESHOLD, create_app
from service.settings import Settings

settings = Settings(**json.loads(sys.argv[1]))

async def main():
    out = {}
    for serving in (False, True):
        app = create_app(settings, serving=serving)
        before = (gc.get_freeze_count(), gc.get_threshold()[0])
        async with app.router.lifespan_context(app):
            out[str(serving)] = [*before, gc.get_freeze_count(), gc.get_threshold()[0]]
    out["young"] = GC_YOUNG_THRESHOLD
    print(json.dumps(out))

asyncio.run(main())
"""


def test_only_a_serving_app_freezes_startup_objects_and_raises_the_young_threshold(
    redis_url: str, tmp_path: Path
) -> None:
    settings = make_settings(redis_url, tmp_path)
    done = subprocess.run(
        [sys.executable, "-c", CHILD, settings.model_dump_json(exclude={"admin_key", "minimax_api_key"})],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["False"] == [0, 700, 0, 700], "an app inside another program leaves its collector as it was"
    frozen_before, young_before, frozen, young = out["True"]
    assert (frozen_before, young_before) == (0, 700)
    assert frozen > 10_000, "the modules and the app made at startup are frozen"
    assert young == out["young"] > 700
