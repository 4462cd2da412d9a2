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
    workers: Annotated[Optional[int], typer.Option(help="Server processes, for --backend openai [env UNLEARN_WORKERS]")] = None,
) -> None:
    """Start the gateway (flags override UNLEARN_* environment variables)."""
    import uvicorn

    from gateway.app import create_app

    overrides = {
        "host": host, "port": port, "backend": backend, "model": model, "upstream_url": upstream, "store": store,
        "log_level": log_level, "workers": workers,
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
    if settings.workers == 1:
        uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=settings.log_level,
                    access_log=_access_log(settings), timeout_graceful_shutdown=10)
        return
    if settings.backend != "openai":
        raise typer.BadParameter("--workers > 1 needs --backend openai: the embedded engine is one model in one "
                                 "process (and ULD's training jobs would run once per process)")
    _serve_workers(settings, {k: v for k, v in overrides.items() if v is not None})


def _serve_workers(settings: Settings, overrides: dict) -> None:
    """Several processes on one socket (uvicorn's supervisor). Each builds its own app from the
    environment, so the flags are handed down as `UNLEARN_*` variables; targets live in the shared
    store, and the metrics of all processes are summed through prometheus-client's multiprocess
    directory (a fresh one per start unless `PROMETHEUS_MULTIPROC_DIR` names one)."""
    import os
    import tempfile

    import uvicorn

    for name, value in overrides.items():
        os.environ[f"UNLEARN_{name.upper()}"] = str(value).lower() if isinstance(value, bool) else str(value)
    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="unlearn-metrics-"))
    uvicorn.run("gateway.app:create_app_from_env", factory=True, workers=settings.workers, host=settings.host,
                port=settings.port, log_level=settings.log_level, access_log=_access_log(settings),
                timeout_graceful_shutdown=10)


def _access_log(settings: Settings) -> bool:
    """uvicorn's access log only where its INFO lines are shown: filtered out, it still costs a
    logging call per request (the request metrics count every request either way)."""
    return settings.log_level.lower() in ("debug", "info")


from uld.cli import uld_app  # noqa: E402  (`unlearn-gateway uld train|status`)

app.add_typer(uld_app, name="uld")

from gateway.targets_cli import targets_app  # noqa: E402  (`unlearn-gateway targets import FILE`)

app.add_typer(targets_app, name="targets")

from unlearn_eval.cli import eval_command  # noqa: E402  (`unlearn-gateway eval`)

app.command("eval")(eval_command)

if __name__ == "__main__":
    app()
