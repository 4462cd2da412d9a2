"""A minimal, fast OpenAI-compatible upstream for proxy benchmarks: fixed tokens, no model.

Raw ASGI on uvicorn (uvloop + httptools), so the upstream costs as little as a
Python server can and the benchmark measures the gateway, not the fake. Chat and
completions answer `--tokens` one-token deltas (stream) or one JSON body
(non-stream), with usage; `/v1/models` lists one model. Streams go out as fast as
the socket takes them, or one delta every `interval_ms` like a model decoding
(set per run with `POST /_bench/pacing {"interval_ms": 1.0}`).

    python bench/fake_upstream.py --port 9100 --tokens 16
"""

from __future__ import annotations

import argparse
import asyncio

import orjson

MODEL = "fake-model"
_WORDS = ("The", " quick", " brown", " fox", " jumps", " over", " the", " lazy", " dog", ".")


def make_app(tokens: int):
    """The ASGI app; every response body is pre-rendered once, so a request costs only I/O."""
    pieces = [_WORDS[i % len(_WORDS)] for i in range(tokens)]
    usage = {"prompt_tokens": 12, "completion_tokens": tokens, "total_tokens": 12 + tokens}
    base = {"id": "chatcmpl-fake", "created": 0, "model": MODEL}

    def chat_chunk(i: int, text: str | None) -> bytes:
        delta = {"role": "assistant", "content": text} if i == 0 else ({"content": text} if text else {})
        finish = "length" if text is None else None
        body = {**base, "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
        return b"data: " + orjson.dumps(body) + b"\n\n"

    def text_chunk(text: str | None) -> bytes:
        body = {**base, "object": "text_completion",
                "choices": [{"index": 0, "text": text or "", "logprobs": None,
                             "finish_reason": "length" if text is None else None}]}
        return b"data: " + orjson.dumps(body) + b"\n\n"

    def usage_chunk(obj: str) -> bytes:
        return b"data: " + orjson.dumps({**base, "object": obj, "choices": [], "usage": usage}) + b"\n\n"

    chat_stream = [chat_chunk(i, p) for i, p in enumerate(pieces)] + [chat_chunk(tokens, None)]
    text_stream = [text_chunk(p) for p in pieces] + [text_chunk(None)]
    chat_body = orjson.dumps({**base, "object": "chat.completion", "usage": usage, "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "".join(pieces)}, "logprobs": None,
         "finish_reason": "length"}]})
    text_body = orjson.dumps({**base, "object": "text_completion", "usage": usage, "choices": [
        {"index": 0, "text": "".join(pieces), "logprobs": None, "finish_reason": "length"}]})
    models_body = orjson.dumps({"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "bench"}]})
    json_headers = [(b"content-type", b"application/json")]
    sse_headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]

    async def read_body(receive) -> bytes:
        parts = []
        while True:
            message = await receive()
            parts.append(message.get("body", b""))
            if not message.get("more_body"):
                return b"".join(parts)

    pacing = {"interval_s": 0.0}

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        path = scope["path"]
        if path == "/_bench/pacing":
            pacing["interval_s"] = float(orjson.loads(await read_body(receive))["interval_ms"]) / 1000
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        if path == "/v1/models":
            await send({"type": "http.response.start", "status": 200, "headers": json_headers})
            await send({"type": "http.response.body", "body": models_body})
            return
        if path not in ("/v1/chat/completions", "/v1/completions"):
            await send({"type": "http.response.start", "status": 404, "headers": json_headers})
            await send({"type": "http.response.body", "body": b'{"error":{"message":"not found"}}'})
            return
        request = orjson.loads(await read_body(receive))
        chat = path == "/v1/chat/completions"
        if not request.get("stream"):
            await send({"type": "http.response.start", "status": 200, "headers": json_headers})
            await send({"type": "http.response.body", "body": chat_body if chat else text_body})
            return
        await send({"type": "http.response.start", "status": 200, "headers": sse_headers})
        interval = pacing["interval_s"]
        for i, chunk in enumerate(chat_stream if chat else text_stream):
            if interval and i:
                await asyncio.sleep(interval)
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        if (request.get("stream_options") or {}).get("include_usage"):
            await send({"type": "http.response.body", "body": usage_chunk("chat.completion.chunk" if chat
                                                                           else "text_completion"),
                        "more_body": True})
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument("--tokens", type=int, default=16)
    args = parser.parse_args()
    import uvicorn

    uvicorn.run(make_app(args.tokens), host=args.host, port=args.port, log_level="warning", access_log=False,
                loop="uvloop", http="httptools", backlog=4096)


if __name__ == "__main__":
    main()
