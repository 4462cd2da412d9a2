"""`unlearn-gateway` command line."""

from __future__ import annotations

import logging
from typing import Annotated, Optional

import typer

from gateway.settings import Settings

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Inference-time unlearning gateway.")


@app.callback()
def main() -> None:
    """OpenAI-compatible gateway that makes an LLM forget registered targets."""


@app.command()
def serve(
    host: Annotated[Optional[str], typer.Option(help="Bind address [env UNLEARN_HOST]")] = None,
    port: Annotated[Optional[int], typer.Option(help="Port [env UNLEARN_PORT]")] = None,
    backend: Annotated[Optional[str], typer.Option(help="local | openai [env UNLEARN_BACKEND]")] = None,
    model: Annotated[Optional[str], typer.Option(help="HF model dir or .gguf file [env UNLEARN_MODEL]")] = None,
    upstream: Annotated[Optional[str], typer.Option(help="Upstream base URL for --backend openai")] = None,
    store: Annotated[Optional[str], typer.Option(help="sqlite:///path.db or redis://host:port/db")] = None,
    insecure_admin: Annotated[bool, typer.Option("--insecure-admin", help="Admin API without a token")] = False,
    fail_open: Annotated[bool, typer.Option("--fail-open", help="Serve unchecked answers if the store is down")] = False,
    log_level: Annotated[Optional[str], typer.Option(help="debug | info | warning")] = None,
) -> None:
    """Start the gateway (flags override UNLEARN_* environment variables)."""
    import uvicorn

    from gateway.app import create_app

    overrides = {
        "host": host, "port": port, "backend": backend, "model": model, "upstream_url": upstream, "store": store,
        "log_level": log_level,
    }
    if insecure_admin:
        overrides["insecure_admin"] = True
    if fail_open:
        overrides["fail_open"] = True
    try:
        settings = Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=settings.log_level,
                timeout_graceful_shutdown=10)


from uld.cli import uld_app  # noqa: E402  (`unlearn-gateway uld train|status`)

app.add_typer(uld_app, name="uld")

if __name__ == "__main__":
    app()
