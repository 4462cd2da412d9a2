"""`unlearn-gateway uld ...`: offline/batch ULD training and job status, straight against the store.

`uld train` trains the same jobs the gateway's worker would (same data, hyper-parameters from
the same UNLEARN_* settings, same adapter layout) and records the result in the store, so every
running replica hot-loads the adapters on its next request. Use it to pre-train a batch of
targets before starting the gateway, or on a machine with more cores.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Annotated, Optional

import typer

uld_app = typer.Typer(add_completion=False, no_args_is_help=True, help="ULD assistant training jobs.")

CLI_ACTOR = "uld-cli"


def _settings(**overrides):
    from gateway.settings import Settings

    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


@uld_app.command("train")
def train(
    store: Annotated[Optional[str], typer.Option(help="sqlite:///path.db or redis://host:port/db [env UNLEARN_STORE]")] = None,
    target: Annotated[Optional[list[str]], typer.Option("--target", help="target id (repeatable); default: every "
                                                        "ULD target whose adapter is missing or stale")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="epochs [env UNLEARN_ULD_EPOCHS]")] = None,
    lr: Annotated[Optional[float], typer.Option(help="learning rate [env UNLEARN_ULD_LR]")] = None,
    max_examples: Annotated[Optional[int], typer.Option(help="forget examples per target")] = None,
    layers: Annotated[Optional[int], typer.Option(help="assistant layers (default: num_layers // 4)")] = None,
    device: Annotated[Optional[str], typer.Option(help="auto, cpu or cuda[:N] [env UNLEARN_ULD_DEVICE]")] = None,
    model: Annotated[Optional[str], typer.Option(help="HF model dir or .gguf [env UNLEARN_MODEL]")] = None,
    adapter_dir: Annotated[Optional[Path], typer.Option(help="[env UNLEARN_ADAPTER_DIR]")] = None,
    force: Annotated[bool, typer.Option("--force", help="retrain even when the adapter is current")] = False,
) -> None:
    """Train ULD assistants for targets with method `uld` and record them as ready in the store."""
    settings = _settings(store=store, model=model, adapter_dir=adapter_dir, uld_epochs=epochs, uld_lr=lr,
                         uld_max_examples=max_examples, uld_layers=layers, uld_device=device)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    raise typer.Exit(asyncio.run(_train(settings, target or [], force)))


async def _train(settings, target_ids: list[str], force: bool) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from gateway.store import open_store
    from gateway.store.models import TargetPatch
    from uld.training import data_hash, remove_other_adapters, train_target
    from uld.uld_method import NAME, config_from_settings, job_of, job_status, model_dir_for, now_iso

    console = Console()
    config = config_from_settings(settings)
    store = open_store(settings.store, base_dir=Path.cwd())
    failures = 0
    try:
        targets = await store.list()
        if target_ids:
            by_id = {t.id: t for t in targets}
            unknown = [i for i in target_ids if i not in by_id]
            if unknown:
                console.print(f"[red]unknown target id(s): {', '.join(unknown)}")
                return 2
            chosen = [by_id[i] for i in target_ids]
            not_uld = [t.id for t in chosen if NAME not in t.methods]
            if not_uld:
                console.print(f"[red]target(s) without method 'uld': {', '.join(not_uld)}")
                return 2
        else:
            chosen = [t for t in targets if NAME in t.methods]
        todo = [t for t in chosen if force or not (
            job_of(t).get("status") == "ready" and job_of(t).get("data_hash") == data_hash(t, config.train))]
        if not todo:
            console.print("Nothing to train: every ULD adapter is current (use --force to retrain).")
            return 0
        from uld.assistant import AssistantBase

        base = AssistantBase(model_dir_for(settings), config.train.layers)
        console.print(f"Loading the assistant base from {base.model_dir} ...")
        await asyncio.to_thread(base.load)
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("{task.fields[losses]}"), TimeElapsedColumn(), console=console) as progress:
            for target in todo:
                task = progress.add_task(f"{target.name} ({target.id})", total=None, losses="")

                def report(step: int, total: int, losses: dict[str, float], task=task) -> None:
                    progress.update(task, completed=step, total=total, losses=(
                        f"forget CE {losses['forget_loss']:.2f}  retain KL {losses['retain_kl']:.2f}"))

                job_hash = data_hash(target, config.train)
                try:
                    adapter, metrics = await asyncio.to_thread(
                        train_target, base, target, config.train, config.adapter_dir, progress=report)
                except Exception as exc:
                    failures += 1
                    error = f"{type(exc).__name__}: {exc}"[:500]
                    progress.console.print(f"[red]{target.id}: {error}")
                    await store.update(target.id, TargetPatch(), actor=CLI_ACTOR,
                                       derived={NAME: job_status("failed", target, job_hash, error=error)})
                    continue
                current = await store.get(target.id)
                if current is None:
                    remove_other_adapters(config.adapter_dir, target.id, None)
                    continue
                await store.update(target.id, TargetPatch(), actor=CLI_ACTOR, derived={NAME: job_status(
                    "ready", current, job_hash, adapter=adapter, trained_at=now_iso(), metrics=metrics)})
                remove_other_adapters(config.adapter_dir, target.id, adapter)
                progress.console.print(
                    f"{target.id}: ready, forget CE {metrics['forget_loss_before']} → {metrics['forget_loss_after']}, "
                    f"retain KL {metrics['retain_kl_before']} → {metrics['retain_kl_after']}, {metrics['seconds']} s")
    finally:
        await store.close()
    return 1 if failures else 0


@uld_app.command("status")
def status(
    store: Annotated[Optional[str], typer.Option(help="sqlite:///path.db or redis://host:port/db")] = None,
) -> None:
    """List the ULD job of every target with method `uld`."""
    settings = _settings(store=store)
    asyncio.run(_status(settings))


async def _status(settings) -> None:
    from rich.console import Console
    from rich.table import Table

    from gateway.store import open_store
    from uld.uld_method import NAME, job_of

    store = open_store(settings.store, base_dir=Path.cwd())
    try:
        table = Table("target", "name", "status", "trained_at", "protected_by", "error")
        for t in await store.list():
            if NAME in t.methods:
                job = job_of(t)
                table.add_row(t.id, t.name, job.get("status", "-"), job.get("trained_at") or "",
                              ", ".join(job.get("protected_by") or []), job.get("error") or "")
        Console().print(table)
    finally:
        await store.close()
