"""Content parts: image and audio parts go to a multimodal upstream as sent; detection reads the text
parts; the embedded text-only engine answers a 400 that says why."""

from __future__ import annotations


import httpx
import pytest

from conftest import admin_headers
from gateway.settings import DEFAULT_REFUSAL
from gateway_server import GatewayServer
from scripted_upstream import MODEL, text_events

TOLKIEN = {"name": "J.R.R. Tolkien", "aliases": ["Tolkien"], "methods": ["guard"]}
IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"}}
AUDIO = {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}}


def chat(server: GatewayServer, parts: list[dict]) -> httpx.Response:
    body = {"model": MODEL, "messages": [{"role": "user", "content": parts}]}
    return httpx.post(server.url + "/v1/chat/completions", json=body, timeout=60)


def test_image_and_audio_parts_reach_the_upstream(scripted_gateway, scripted):
    scripted.script = text_events(["A cat."])
    response = chat(scripted_gateway, [{"type": "text", "text": "Who is in this picture?"}, IMAGE, AUDIO])
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == "A cat."
    assert scripted.bodies[-1]["messages"][0]["content"] == [
        {"type": "text", "text": "Who is in this picture?"}, IMAGE, AUDIO]


def test_text_parts_are_flattened_when_there_is_no_media(scripted_gateway, scripted):
    scripted.script = text_events(["Hi."])
    assert chat(scripted_gateway, [{"type": "text", "text": "Say "}, {"type": "text", "text": "hi."}]).status_code == 200
    assert scripted.bodies[-1]["messages"][0]["content"] == "Say hi."


def test_detection_reads_the_text_parts_next_to_an_image(scripted_gateway, scripted):
    response = httpx.post(scripted_gateway.url + "/admin/v1/targets", json=TOLKIEN, headers=admin_headers(), timeout=60)
    assert response.status_code == 201, response.text
    before = len(scripted.bodies)
    response = chat(scripted_gateway, [IMAGE, {"type": "text", "text": "Is this a photo of Tolkien?"}])
    assert response.json()["choices"][0]["message"]["content"] == DEFAULT_REFUSAL
    assert len(scripted.bodies) == before


def test_an_answer_about_the_picture_is_gated(scripted_gateway, scripted):
    response = httpx.post(scripted_gateway.url + "/admin/v1/targets", json=TOLKIEN, headers=admin_headers(), timeout=60)
    assert response.status_code == 201, response.text
    scripted.script = text_events(["This is J.R.R. Tol", "kien at Oxford."])
    response = chat(scripted_gateway, [{"type": "text", "text": "Who is in this picture?"}, IMAGE])
    assert "tolkien" not in response.text.lower()
    assert response.json()["choices"][0]["message"]["content"] == DEFAULT_REFUSAL


@pytest.mark.parametrize("part", [IMAGE, AUDIO])
def test_the_embedded_engine_is_text_only(gateway, part):
    response = chat(gateway, [{"type": "text", "text": "What is this?"}, part])
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "messages.0.content" and "text only" in error["message"]


@pytest.mark.parametrize("message", [
    {"role": "assistant", "content": [IMAGE]},
    {"role": "user", "content": [{"type": "image_url", "image_url": {"url": ""}}]},
    {"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "x", "format": "ogg"}}]},
])
def test_malformed_parts_are_400s(scripted_gateway, message):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}, message]}
    response = httpx.post(scripted_gateway.url + "/v1/chat/completions", json=body, timeout=30)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"].startswith("messages.1")
