"""The offline stand-in for M2-her: a real HTTP server speaking both routes, quirks included.

`python -m service.standin [--host H] [--port P]` (port also from ATTUNE_STANDIN_PORT). It follows
docs/m2her-api.md: text in the finish chunk, the native route's final aggregate chunk, the OpenAI
route's usage-only chunk with `choices: []`, `[DONE]` sometimes, errors inside a 200 stream, empty
`delta.role`, 2013 (or 1000) for advanced roles sent without `name`, strict parameter checks.

Like a real model it follows the reader-preference note imperfectly: the requested pacing with
probability FOLLOW_PACING, a length spread around the requested target, cut at
max_completion_tokens. `perceived_pacing(text)` is what a reader would infer from a reply.

Control endpoints for tests and benchmarks (no auth; loopback only):
  POST /_standin/config  {"first_byte_ms", "chunk_ms", "done": "always|never|random", "seed",
                          "advanced_roles_error": 2013|1000, "reject_advanced": bool}
  POST /_standin/faults  {"faults": [fault, ...]}: consumed one per chat request, in order. A fault:
      {"status": 429, "code": 1002}          an error answer before the first byte
      {"stream_error_after": 3, "code": 1000} a 200 stream that carries an error chunk after 3 chunks
      {"delay_ms": 2000}                      slow first byte (before the response headers)
      {"drop_after": 3}                       the connection closes after 3 chunks
  GET|DELETE /_standin/log  the last requests: body received, reply, pacing, chunks sent, disconnects
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import random
import re
import socket
import time
import uuid
from collections import deque
from typing import Any

import orjson
from aiohttp import web

from service import standin_zh as zh

PACING = ("slow_burn", "balanced", "fast")
FOLLOW_PACING = 0.8  # the share of replies that take the requested pacing
CHARS_PER_TOKEN = 4.0
ADVANCED_ROLES = ("user_system", "group", "sample_message_user", "sample_message_ai")
ROLES = ("system", *ADVANCED_ROLES, "user", "assistant")
ALLOWED = {"model", "messages", "stream", "max_completion_tokens", "max_tokens", "temperature", "top_p"}
UNPROMPTED = {"slow_burn": 0.25, "balanced": 0.5, "fast": 0.25}  # the model's own habit with no note
NATURAL_CHARS = {"slow_burn": 560, "balanced": 360, "fast": 220}

# Each pacing has its own voice; a reader tells them apart by these marks (see perceived_pacing).
SENTENCES = {
    "slow_burn": [
        "*The lamplight lingers on the rim of her cup, and for a long moment she says nothing at all.*",
        "She lets the quiet settle between you, slowly, as if every breath deserves its own space.",
        "Outside, the rain keeps its patient rhythm against the glass, soft and unhurried.",
        "*Her fingers trace the grain of the old table slowly, remembering something she does not name.*",
        '"There is no hurry," she murmurs gently. "Stay a while, and tell me what you see."',
        "The candle gutters, and its shadow leans across the wall like a tired old friend.",
        "*She watches the steam curl upward, quietly, her thoughts drifting somewhere far away.*",
        "Somewhere below, a door closes softly, and the stillness of the house gathers around you.",
        '"I used to come here as a child," she says softly, her voice lingering on each word.',
        "The scent of cedar and old paper hangs in the warm air, patient as the evening itself.",
    ],
    "balanced": [
        "She sets the cup down and meets your eyes.",
        '"I found something in the archive," she says, sliding a folded map across the table.',
        "*The fire crackles while she waits for your answer.*",
        "Then she leans back, thoughtful, and nods toward the door.",
        '"We leave at dawn, if you are still willing to come," she adds.',
        "A cart rolls past the window, and she glances at it before turning back to you.",
        '*She taps the map where the river bends.* "Here. This is where they were last seen."',
        "Her tone is steady, but her hand rests on the hilt of her knife.",
        '"Tell me what you know, and I will tell you what I know," she offers.',
        "The innkeeper calls out the last orders, and the room grows a little louder.",
    ],
    "fast": [
        "*She's already moving.*",
        '"Now! Go!"',
        "The door bursts open!",
        "Suddenly, boots thunder down the hall.",
        "*She grabs your wrist and runs.*",
        "No time to think!",
        '"Left! No, right!"',
        "Glass shatters. Someone shouts!",
        "*She vaults the railing and lands hard.*",
        '"Faster! They\'re right behind us!"',
    ],
}
# Spoken lines in each voice, for replies asked for mostly dialogue or a balance (SENTENCES alone hold a few).
SPOKEN = {
    "slow_burn": [
        '"Stay with me a little longer, while the evening settles and the candles burn down slowly," '
        'she murmurs.',
        '"I keep remembering the winters of my childhood, the frost on the windows and the patient fires," '
        'she says softly.',
        '"Whatever brought you here tonight can wait until the tea has cooled and the rain has quieted," '
        'she whispers.',
        '"There is something comforting about an old house at midnight, everything breathing gently '
        'around us," she murmurs.',
        '"Tell me everything about the journey, every winding road and every lingering conversation," '
        'she says quietly.',
        '"Sometimes silence says more than any explanation, especially between people who understand each '
        'other," she murmurs.',
    ],
    "balanced": [
        '"The bridge is out, so we take the ford," she says, tracing the route on the map.',
        '"I trust you, but I need to know what you saw," she adds, her voice steady.',
        '"If we ride hard, we reach the village by nightfall," she offers.',
        '"Tell me the truth, and we can plan from there," she says, and meets your eyes.',
        '"Two guards at the gate, one on the wall," she says. "We can manage that."',
        '"Bring the lantern," she adds. "And the map, in case the trail splits."',
    ],
    "fast": [
        '"Move! Now!"',
        '"Duck!"',
        '"Behind you! Go!"',
        '"Run! Don\'t look back!"',
        '"Take the stairs! Hurry!"',
        '"They\'re here! Faster!"',
    ],
}
FOLLOW_DIALOGUE = 0.8  # the share of replies that take the requested balance of speech and narration
# Each sentence's chance of being spoken, per balance asked for (a model asked for mostly dialogue still
# narrates a little, and tags its lines: about half the text ends up quoted, as in dialogue-heavy role-play).
SPOKEN_SHARE = {"mostly_dialogue": 0.75, "balanced": 0.4, "mostly_narration": 0.0}
HOOKS = {
    "slow_burn": '"What are you thinking about?" she asks quietly, after a long, lingering silence.',
    "balanced": '"So, are you with me?"',
    "fast": '"Jump! Now! Are you coming or not?"',
}
_MARKS = {
    "slow_burn": re.compile(
        r"\b(slowly|softly|gently|quietly|linger\w*|patient|unhurried|stillness|long moment|"
        r"silence|drifting|murmurs|warm air|tired old)\b",
        re.I,
    ),
    "fast": re.compile(
        r"!|\b(suddenly|bursts|grabs|runs|vaults|shatters|thunder|now|faster|no time|jump)\b", re.I
    ),
    "balanced": re.compile(
        r"\b(meets your eyes|she says|nods|waits|she adds|steady|she offers|glances|"
        r"last orders|the map|the archive|at dawn|are you with me)\b",
        re.I,
    ),
}
_NOTE_PACE = re.compile(r"Pace:\s*(slow burn|balanced|fast)", re.I)
_NOTE_DIALOGUE = re.compile(r"Dialogue:\s*(mostly dialogue|mostly narration|balanced)", re.I)
_NOTE_LENGTH = re.compile(r"about\s+(\d{1,5})\s+characters", re.I)


def perceived_pacing(text: str) -> str:
    """The pacing a reader would infer from a reply: the voice whose marks dominate it."""
    scores = {p: len(rx.findall(text)) + len(zh.MARKS[p].findall(text)) for p, rx in _MARKS.items()}
    best = max(scores.values())
    if best == 0:
        return "balanced"
    winners = [p for p, s in scores.items() if s == best]
    return winners[0] if len(winners) == 1 else "balanced"  # a reply that mixes voices reads as balanced


def read_note(messages: list[dict[str, Any]]) -> tuple[str | None, int | None, str | None]:
    """The pacing, length and balance of speech and narration (mostly_dialogue, balanced or mostly_narration)
    a reader-preference note asks for, wherever it sits in the messages."""
    pacing = target = dialogue = None
    for m in messages:
        content = m.get("content")
        if not isinstance(content, str) or (
                "Pace:" not in content and "characters" not in content and "Dialogue:" not in content):
            continue
        if (pm := _NOTE_PACE.search(content)) is not None:
            pacing = pm.group(1).lower().replace(" ", "_")
        if (lm := _NOTE_LENGTH.search(content)) is not None:
            target = int(lm.group(1))
        if "Dialogue:" in content and (dm := _NOTE_DIALOGUE.search(content)) is not None:
            dialogue = dm.group(1).lower().replace(" ", "_")
    return pacing, target, dialogue


def compose(messages: list[dict[str, Any]], max_tokens: int | None, rng: random.Random) -> dict[str, Any]:
    """The reply a model might write: pacing and length follow the note imperfectly; cut at max_tokens."""
    asked_pacing, asked_chars, asked_dialogue = read_note(messages)
    last_user = next((m.get("content") for m in reversed(messages) if m.get("role") == "user"), None)
    chinese = isinstance(last_user, str) and zh.is_chinese(last_user)  # M2-her answers in the user's language
    sentences, spoken, hooks, natural = ((zh.SENTENCES, zh.SPOKEN, zh.HOOKS, zh.NATURAL_CHARS) if chinese
                                         else (SENTENCES, SPOKEN, HOOKS, NATURAL_CHARS))
    # Drawn only when asked, so a reply without that note is the same as before it existed.
    balance = asked_dialogue if asked_dialogue and rng.random() < FOLLOW_DIALOGUE else None
    if asked_pacing in PACING and rng.random() < FOLLOW_PACING:
        pacing = asked_pacing
    elif asked_pacing in PACING:
        pacing = rng.choice([p for p in PACING if p != asked_pacing])
    else:
        pacing = rng.choices(PACING, weights=[UNPROMPTED[p] for p in PACING])[0]
    if asked_chars:
        want = asked_chars * math.exp(rng.gauss(0.0, 0.2))  # follows the asked length, loosely
    else:
        want = natural[pacing] * math.exp(rng.gauss(0.0, 0.45))
    parts: list[str] = []
    size = 0
    pool: list[str] = []
    spoken_pool: list[str] = []
    while size < want - 40 or not parts:
        if balance is not None and rng.random() < SPOKEN_SHARE[balance]:
            if not spoken_pool:
                lines = spoken[pacing] + [s for s in sentences[pacing] if s.startswith(('"', "“"))]
                spoken_pool = rng.sample(lines, len(lines))
            s = spoken_pool.pop()
        else:
            if not pool:  # each sentence once before any repeats, like a model that does not loop
                voice = sentences[pacing]
                if balance is not None:  # its spoken lines come from the other pool
                    voice = [s for s in voice if not s.startswith(('"', "“"))]
                pool = rng.sample(voice, len(voice))
            s = pool.pop()
        parts.append(s)
        size += len(s) + (not chinese)
    if rng.random() < 0.5 and balance != "mostly_narration":  # the hooks are spoken: none in narration
        parts.append(hooks[pacing])
    text = ("" if chinese else " ").join(parts)  # Chinese puts no space between sentences
    finish = "stop"
    if max_tokens is not None and _tokens(text) > max_tokens:
        cut = int(len(text) * max_tokens / _tokens(text)) if chinese else int(max_tokens * CHARS_PER_TOKEN)
        text = text[:cut]
        if " " in text[1:]:
            text = text[: text.rindex(" ")]
        finish = "length"
    return {
        "text": text,
        "pacing": pacing,
        "finish_reason": finish,
        "asked_pacing": asked_pacing,
        "asked_chars": asked_chars,
        "asked_dialogue": asked_dialogue,
    }


def _tokens(text: str) -> int:
    if not text:
        return 0
    cjk = 0 if text.isascii() else zh.cjk_count(text)
    return max(1, math.ceil(cjk / zh.CHARS_PER_TOKEN + (len(text) - cjk) / CHARS_PER_TOKEN))


def _chunks(text: str, rng: random.Random) -> list[str]:
    """Pieces of one to three words with their spaces, as a model streams tokens in groups."""
    words = re.findall(r"\S+\s*", text) if text.isascii() or " " in text else list(text)  # Chinese: characters
    out, i = [], 0
    while i < len(words):
        n = rng.randint(1, 3)
        out.append("".join(words[i : i + n]))
        i += n
    return out or [""]


class BadRequest(Exception):
    def __init__(self, code: int, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code, self.message, self.status = code, message, status


class StandIn:
    def __init__(self, first_byte_ms: float = 400.0, chunk_ms: float = 40.0, seed: int | None = None) -> None:
        self.config: dict[str, Any] = {
            "first_byte_ms": first_byte_ms,
            "chunk_ms": chunk_ms,
            "done": "random",
            "advanced_roles_error": 2013,
            "reject_advanced": False,
            "lenient": False,
        }
        self.rng = random.Random(seed)
        self.faults: deque[dict[str, Any]] = deque()
        self.log: deque[dict[str, Any]] = deque(maxlen=500)
        self.requests = 0

    # --- validation, as M2-her answers ---------------------------------------------------------
    def check(self, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise BadRequest(2013, "invalid params, body must be a JSON object (2013)")
        unknown = sorted(set(body) - ALLOWED)
        if unknown and self.config["lenient"]:  # benchmarks: proxies that add fields of their own
            body = {k: v for k, v in body.items() if k in ALLOWED}
        elif unknown:
            raise BadRequest(2013, f"invalid params, unsupported fields {unknown} (2013)")
        if body.get("model") != "M2-her":
            raise BadRequest(2013, f"invalid params, unknown model {body.get('model')!r} (2013)")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise BadRequest(2013, "invalid params, messages must be a non-empty list (2013)")
        for m in messages:
            if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
                raise BadRequest(2013, f"invalid params, bad message {str(m)[:80]} (2013)")
            if m["role"] in ADVANCED_ROLES and (not m.get("name") or self.config["reject_advanced"]):
                if self.config["advanced_roles_error"] == 1000:
                    raise BadRequest(1000, "unknown error, 999 (1000)", status=500)
                raise BadRequest(2013, f"invalid params, role {m['role']} requires name (2013)")
        for field, lo, hi in (("temperature", 0.0, 1.0), ("top_p", 0.0, 1.0)):
            v = body.get(field)
            if v is not None and (not isinstance(v, int | float) or not lo < v <= hi):
                raise BadRequest(2013, f"invalid params, {field} {v!r} out of range (0, 1] (2013)")
        mt = body.get("max_completion_tokens", body.get("max_tokens"))
        if mt is not None and (not isinstance(mt, int) or isinstance(mt, bool) or not 1 <= mt <= 2048):
            raise BadRequest(
                2013, f"invalid params, max_completion_tokens {mt!r} out of range 1..2048 (2013)"
            )
        return body

    # --- responses --------------------------------------------------------------------------------
    @staticmethod
    def error_response(route: str, code: int, message: str, status: int) -> web.Response:
        if route == "openai":
            kind = {400: "bad_request_error", 401: "authentication_error", 429: "rate_limit_error"}.get(
                status, "api_error"
            )
            body = {"error": {"message": message, "type": kind}}
        else:
            body = {
                "id": uuid.uuid4().hex,
                "choices": None,
                "base_resp": {"status_code": code, "status_msg": message},
            }
        return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")

    async def handle(self, request: web.Request, route: str) -> web.StreamResponse:
        self.requests += 1
        fault = self.faults.popleft() if self.faults else {}
        entry: dict[str, Any] = {"route": route, "t": time.time(), "fault": fault or None}
        self.log.append(entry)
        try:
            raw = await request.read()
            if fault.get("delay_ms"):
                await asyncio.sleep(fault["delay_ms"] / 1000)
        except ConnectionError:
            entry["disconnected"] = True
            raise
        if (
            not request.headers.get("authorization", "").startswith("Bearer ")
            or len(request.headers.get("authorization", "")) < 8
        ):
            return self.error_response(route, 1004, "login fail: Please carry the API secret key (1004)", 401)
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return self.error_response(route, 2013, "invalid params, body is not JSON (2013)", 400)
        entry["body"] = body
        if fault.get("status"):
            code = int(fault.get("code", 1000))
            return self.error_response(
                route, code, fault.get("message", f"injected error ({code})"), int(fault["status"])
            )
        try:
            body = self.check(body)
        except BadRequest as exc:
            entry["rejected"] = exc.code
            return self.error_response(route, exc.code, exc.message, exc.status)
        reply = compose(body["messages"], body.get("max_completion_tokens", body.get("max_tokens")), self.rng)
        entry.update(reply=reply["text"], pacing=reply["pacing"], finish_reason=reply["finish_reason"])
        base = {"id": uuid.uuid4().hex, "created": int(time.time()), "model": "M2-her"}
        name = next(
            (m.get("name") for m in body["messages"] if m["role"] == "system" and m.get("name")), "M2-her"
        )
        usage = {
            "prompt_tokens": sum(_tokens(m["content"]) for m in body["messages"]),
            "completion_tokens": _tokens(reply["text"]),
        }
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        if not body.get("stream"):
            entry.update(disconnected=False, completed=False)
            await self._sleep(self.config["first_byte_ms"])
            if request.transport is None or request.transport.is_closing():
                entry["disconnected"] = True  # the caller hung up while the reply was being "generated"
            else:
                entry["completed"] = True
            return web.Response(
                body=orjson.dumps(self._full(base, name, reply, usage)), content_type="application/json"
            )
        return await self._stream(request, route, base, name, reply, usage, fault, entry)

    @staticmethod
    def _full(
        base: dict[str, Any], name: str, reply: dict[str, Any], usage: dict[str, Any]
    ) -> dict[str, Any]:
        return {
            **base,
            "object": "chat.completion",
            "choices": [
                {
                    "index": 0,
                    "finish_reason": reply["finish_reason"],
                    "message": {
                        "role": "assistant",
                        "name": name,
                        "content": reply["text"],
                        "audio_content": "",
                    },
                }
            ],
            "usage": {**usage, "total_characters": 0},
            "input_sensitive": False,
            "output_sensitive": False,
            "input_sensitive_type": 0,
            "output_sensitive_type": 0,
            "base_resp": {"status_code": 0, "status_msg": ""},
        }

    async def _sleep(self, ms: float) -> None:
        if ms > 0:
            await asyncio.sleep(ms / 1000)

    async def _stream(
        self,
        request: web.Request,
        route: str,
        base: dict[str, Any],
        name: str,
        reply: dict[str, Any],
        usage: dict[str, Any],
        fault: dict[str, Any],
        entry: dict[str, Any],
    ) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        pieces = _chunks(reply["text"], self.rng)
        entry.update(chunks_total=len(pieces), chunks_sent=0, disconnected=False, completed=False)
        await self._sleep(self.config["first_byte_ms"])
        if request.transport is None or request.transport.is_closing():
            entry["disconnected"] = True  # the caller hung up before the first byte
            return resp
        await resp.prepare(request)
        error_after = fault.get("stream_error_after")
        drop_after = fault.get("drop_after")
        try:
            for i, piece in enumerate(pieces):
                if error_after is not None and i == error_after:
                    code = int(fault.get("code", 1000))
                    await resp.write(
                        b"data: "
                        + orjson.dumps(
                            {
                                **base,
                                "choices": None,
                                "base_resp": {
                                    "status_code": code,
                                    "status_msg": fault.get("message", f"injected stream error ({code})"),
                                },
                            }
                        )
                        + b"\n\n"
                    )
                    entry["stream_error"] = code
                    return resp
                if drop_after is not None and i == drop_after:
                    entry["dropped"] = True
                    assert request.transport is not None
                    request.transport.close()
                    return resp
                if i:
                    await self._sleep(self.config["chunk_ms"])
                last = i == len(pieces) - 1
                # Quirks: the first delta's role is an empty string; the finish chunk still carries text.
                delta = {
                    "content": piece,
                    "role": "" if i == 0 else "assistant",
                    "name": name,
                    "audio_content": "",
                }
                choice: dict[str, Any] = {"index": 0, "delta": delta}
                if last:
                    choice["finish_reason"] = reply["finish_reason"]
                chunk = {
                    **base,
                    "object": "chat.completion.chunk",
                    "choices": [choice],
                    "usage": None,
                    "input_sensitive": False,
                    "output_sensitive": False,
                }
                await resp.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
                entry["chunks_sent"] = i + 1
            if route == "native":
                final = self._full(base, name, reply, usage)
                final["object"] = "chat.completion.chunk"
                await resp.write(b"data: " + orjson.dumps(final) + b"\n\n")
            else:
                await resp.write(
                    b"data: "
                    + orjson.dumps({**base, "object": "chat.completion.chunk", "choices": [], "usage": usage})
                    + b"\n\n"
                )
            done = self.config["done"]
            if done == "always" or done == "random" and self.rng.random() < 0.5:
                await resp.write(b"data: [DONE]\n\n")
            entry["completed"] = True
            await resp.write_eof()
        except (ConnectionResetError, ConnectionError, asyncio.CancelledError):
            entry["disconnected"] = True
            if asyncio.current_task() is not None and asyncio.current_task().cancelling():  # type: ignore[union-attr]
                raise
        return resp

    # --- the aiohttp app --------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application(client_max_size=8 * 1024 * 1024)
        app.router.add_post("/v1/text/chatcompletion_v2", self.native)
        app.router.add_post("/v1/chat/completions", self.openai)
        app.router.add_post("/_standin/config", self.set_config)
        app.router.add_post("/_standin/faults", self.add_faults)
        app.router.add_delete("/_standin/faults", self.clear_faults)
        app.router.add_get("/_standin/log", self.get_log)
        app.router.add_delete("/_standin/log", self.clear_log)
        app.router.add_get("/healthz", self.health)
        return app

    async def native(self, request: web.Request) -> web.StreamResponse:
        return await self.handle(request, "native")

    async def openai(self, request: web.Request) -> web.StreamResponse:
        return await self.handle(request, "openai")

    async def health(self, _: web.Request) -> web.Response:
        return web.json_response({"ok": True, "requests": self.requests})

    async def set_config(self, request: web.Request) -> web.Response:
        body = await request.json()
        if "seed" in body:
            self.rng.seed(body.pop("seed"))
        unknown = set(body) - set(self.config)
        if unknown:
            return web.json_response(
                {"error": f"unknown config {sorted(unknown)}; known: {sorted(self.config)}"}, status=400
            )
        self.config.update(body)
        return web.json_response(self.config)

    async def add_faults(self, request: web.Request) -> web.Response:
        self.faults.extend((await request.json())["faults"])
        return web.json_response({"queued": len(self.faults)})

    async def clear_faults(self, _: web.Request) -> web.Response:
        self.faults.clear()
        return web.json_response({"queued": 0})

    async def get_log(self, request: web.Request) -> web.Response:
        n = int(request.query.get("n", "50"))
        return web.Response(body=orjson.dumps(list(self.log)[-n:]), content_type="application/json")

    async def clear_log(self, _: web.Request) -> web.Response:
        self.log.clear()
        return web.json_response({"cleared": True})


@contextlib.contextmanager
def running(host: str = "127.0.0.1", port: int = 0, **kw: Any):  # noqa: ANN201 - a context manager
    """A stand-in on loopback in a thread of this process (tests): yields (StandIn, base_url)."""
    import threading  # noqa: PLC0415

    standin = StandIn(**kw)
    loop = asyncio.new_event_loop()
    started = threading.Event()
    holder: dict[str, Any] = {}

    async def main() -> None:
        runner = web.AppRunner(standin.app(), access_log=None, handle_signals=False)
        try:
            await runner.setup()
            site = web.TCPSite(runner, host, port)
            await site.start()
            holder["port"] = runner.addresses[0][1]
            holder["stop"] = asyncio.Event()
        finally:
            started.set()
        await holder["stop"].wait()
        await runner.cleanup()

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    started.wait(10)
    if "stop" not in holder:
        thread.join(5)
        loop.close()
        raise RuntimeError("the stand-in did not start; see the exception above")
    try:
        yield standin, f"http://{host}:{holder['port']}"
    finally:
        loop.call_soon_threadsafe(holder["stop"].set)
        thread.join(10)
        loop.close()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="attune standin", description="The offline M2-her stand-in server.")
    parser.add_argument("--host", default=os.environ.get("ATTUNE_STANDIN_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("ATTUNE_STANDIN_PORT", "8010")))
    parser.add_argument(
        "--first-byte-ms", type=float, default=float(os.environ.get("ATTUNE_STANDIN_FIRST_BYTE_MS", "400"))
    )
    parser.add_argument(
        "--chunk-ms", type=float, default=float(os.environ.get("ATTUNE_STANDIN_CHUNK_MS", "40"))
    )
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument(
        "--lenient", action="store_true", help="ignore fields M2-her does not take (benchmarks)"
    )
    parser.add_argument("--reuse-port", action="store_true", help="several stand-in processes on one port")
    fd = os.environ.get("ATTUNE_STANDIN_FD")
    parser.add_argument(
        "--fd", type=int, default=int(fd) if fd else None,
        help="serve on this inherited listening socket instead of binding --host/--port (the supervisor's "
        "way: no gap between picking a free port and binding it)",
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    with contextlib.suppress(ImportError):
        import uvloop  # noqa: PLC0415

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    standin = StandIn(first_byte_ms=args.first_byte_ms, chunk_ms=args.chunk_ms, seed=args.seed)
    standin.config["lenient"] = args.lenient
    sock = None
    host, port = args.host, args.port
    if args.fd is not None:
        sock = socket.socket(fileno=args.fd)
        host, port = sock.getsockname()[:2]
    print(
        f"M2-her stand-in on http://{host}:{port} (first byte {args.first_byte_ms:.0f} ms, "
        f"{args.chunk_ms:.0f} ms between chunks)",
        flush=True,
    )
    if sock is not None:
        web.run_app(standin.app(), sock=sock, access_log=None, print=None)
        return
    web.run_app(
        standin.app(),
        host=host,
        port=port,
        access_log=None,
        print=None,
        reuse_port=args.reuse_port or None,
    )


if __name__ == "__main__":
    main()
