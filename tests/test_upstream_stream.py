"""Parsing an upstream's SSE answer: framing variants, per-read merging, usage and failures.

The response object is a stand-in that replays fixed network reads, so each test
controls exactly which events arrive together.
"""

from __future__ import annotations

import orjson
import pytest

from gateway.backends.base import BackendError
from gateway.backends.upstream_http import EmptyStream
from gateway.backends.upstream_stream import StreamRecord, upstream_chunks


class Replay:
    """What `upstream_chunks` reads of an upstream response: headers and the body's reads."""

    def __init__(self, reads: list[bytes], content_type: str = "text/event-stream"):
        self.headers = {"content-type": content_type}
        self._reads = reads

    async def iter_chunks(self):
        for read in self._reads:
            yield read

    async def read(self, limit: int | None = None) -> bytes:
        return b"".join(self._reads)[:limit]


def event(text: str | None = None, finish: str | None = None, **extra) -> bytes:
    choice = {"index": 0, "delta": {} if text is None else {"content": text}, "finish_reason": finish, **extra}
    return b"data: " + orjson.dumps({"object": "chat.completion.chunk", "choices": [choice]}) + b"\n\n"


USAGE = b'data: {"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 3}}\n\n'
DONE = b"data: [DONE]\n\n"


async def chunks(reads: list[bytes], *, want_logprobs: bool = False) -> tuple[list, StreamRecord]:
    record = StreamRecord()
    out = [c async for c in upstream_chunks(Replay(reads), record, chat=True, want_logprobs=want_logprobs,
                                            track=True, streamed=True, count_prompt=lambda: 99)]
    return out, record


async def test_events_of_one_read_become_one_chunk_and_each_read_its_own() -> None:
    out, record = await chunks([event("The") + event(" quick") + event(" brown"), event(" fox"),
                                event(None, "stop") + USAGE + DONE])
    assert [c.text for c in out] == ["The quick brown", " fox", ""]
    assert out[-1].finish_reason == "stop" and (out[-1].prompt_tokens, out[-1].completion_tokens) == (7, 3)
    assert record.deltas == ["The", " quick", " brown", " fox"]  # per event, for the ignored-ban check


async def test_text_in_the_finishing_read_rides_on_the_final_chunk() -> None:
    out, _ = await chunks([event("Hi") + event(" there", "length") + DONE])
    assert [(c.text, c.finish_reason) for c in out] == [("Hi there", "length")]
    assert out[0].prompt_tokens == 99  # no usage from the upstream: counted locally


async def test_logprobs_and_token_ids_stay_in_order_when_merged() -> None:
    def lp(token: str) -> dict:
        return {"content": [{"token": token, "logprob": -0.5, "bytes": list(token.encode()), "top_logprobs": []}]}

    out, record = await chunks([event("A", token_ids=[1], logprobs=lp("A")) + event("B", token_ids=[2], logprobs=lp("B")),
                                event(None, "stop") + DONE], want_logprobs=True)
    assert out[0].text == "AB" and out[0].token_ids == [1, 2] and [e.token for e in out[0].logprobs] == ["A", "B"]
    assert record.exact_ids and record.token_ids == [1, 2]


async def test_sse_framing_variants() -> None:
    """CRLF line ends (one split between reads), comments, other fields, multi-line data, no final blank line."""
    body = (b": ping\r\n\r\nevent: message\r\nid: 1\r\n" + event("one").replace(b"\n", b"\r\n")
            + b'data: {"choices": [{"index": 0,\ndata: "delta": {"content": " two"}}]}\n\n'
            + event(None, "stop") + b"data: [DONE]")
    cut = body.index(b"\r\n", 20) + 1  # between a "\r" and its "\n"
    out, _ = await chunks([body[:cut], body[cut:]])
    assert "".join(c.text for c in out) == "one two" and out[-1].finish_reason == "stop"


async def test_a_plain_json_body_is_one_event() -> None:
    body = orjson.dumps({"choices": [{"index": 0, "message": {"content": "Paris."}, "finish_reason": "stop"}],
                         "usage": {"prompt_tokens": 5, "completion_tokens": 2}})
    record = StreamRecord()
    out = [c async for c in upstream_chunks(Replay([body], "application/json"), record, chat=True,
                                            want_logprobs=False, track=False, streamed=False, count_prompt=lambda: 0)]
    assert [(c.text, c.finish_reason, c.completion_tokens) for c in out] == [("Paris.", "stop", 2)]


@pytest.mark.parametrize("bad", [b"data: {not json\n\n",
                                 b'data: {"error": {"message": "engine died"}}\n\n'])
async def test_text_before_a_failure_in_the_same_read_still_goes_out_first(bad: bytes) -> None:
    record, got = StreamRecord(), []
    with pytest.raises(BackendError) as failure:
        async for chunk in upstream_chunks(Replay([event("Hello") + bad]), record, chat=True, want_logprobs=False,
                                           track=False, streamed=True, count_prompt=lambda: 0):
            got.append(chunk.text)
    assert got == ["Hello"] and failure.value.status == 502


async def test_unfinished_and_empty_streams_are_errors() -> None:
    with pytest.raises(BackendError, match="ended before"):
        await chunks([event("Hello") + DONE])
    with pytest.raises(EmptyStream):
        await chunks([b""])
