"""`unlearn-gateway targets import FILE.jsonl|csv`: bulk registration through the admin API.

The file is read in batches that go to `POST /admin/v1/targets:batch` (each batch is
stored atomically), so a replica enforces every imported target exactly as if it had
been registered one by one, and the import works against any replica, local or not.

CSV columns: `name` (required), `aliases`, `facts` (several values separated by `|`),
`description`, `documents`, `methods` (also `|`-separated) and `tenant`.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Optional

import httpx
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

targets_app = typer.Typer(no_args_is_help=True, help="Manage forget targets through a gateway's admin API.")

_LIST_COLUMNS = ("aliases", "facts", "documents", "methods")
_TEXT_COLUMNS = ("name", "description", "tenant")


def read_targets(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, target object) for each target in a `.jsonl` or `.csv` file."""
    suffix = path.suffix.lower()
    with path.open(newline="", encoding="utf-8") as handle:
        if suffix == ".jsonl":
            for number, line in enumerate(handle, start=1):
                if line.strip():
                    try:
                        item = json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise typer.BadParameter(f"{path}:{number}: not JSON ({exc.msg})") from None
                    yield number, item
        elif suffix == ".csv":
            reader = csv.DictReader(handle)
            unknown = set(reader.fieldnames or ()) - {*_LIST_COLUMNS, *_TEXT_COLUMNS}
            if unknown or "name" not in (reader.fieldnames or ()):
                raise typer.BadParameter(f"{path}: needs a 'name' column; unknown columns {sorted(unknown)}")
            for number, row in enumerate(reader, start=2):
                item: dict[str, Any] = {k: row[k] for k in _TEXT_COLUMNS if row.get(k)}
                item.update({k: [v.strip() for v in row[k].split("|") if v.strip()]
                             for k in _LIST_COLUMNS if row.get(k)})
                yield number, item
        else:
            raise typer.BadParameter(f"{path}: expected a .jsonl or .csv file")


def _batches(items: Iterator[tuple[int, dict[str, Any]]], size: int) -> Iterator[list[tuple[int, dict[str, Any]]]]:
    batch: list[tuple[int, dict[str, Any]]] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


@targets_app.command("import")
def import_targets(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help=".jsonl (one target object a line) or .csv")],
    url: Annotated[str, typer.Option(help="Gateway base URL [env UNLEARN_URL]")] = "",
    token: Annotated[Optional[str], typer.Option(help="Admin token [env UNLEARN_ADMIN_TOKEN]")] = None,
    batch_size: Annotated[int, typer.Option(min=1, max=10_000, help="Targets per atomic batch")] = 1_000,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for one batch")] = 600.0,
) -> None:
    """Register every target in FILE, batch by batch. A batch with an invalid item stores nothing:
    the import stops there and names the file line of each invalid item."""
    console = Console(stderr=True)
    base = (url or os.environ.get("UNLEARN_URL") or "http://127.0.0.1:8000").rstrip("/")
    token = token or os.environ.get("UNLEARN_ADMIN_TOKEN")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    total = sum(1 for _ in read_targets(file))
    done = 0
    columns = (TextColumn("importing"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with httpx.Client(base_url=base, headers=headers, timeout=timeout) as client, \
            Progress(*columns, console=console) as progress:
        task = progress.add_task("targets", total=total)
        for batch in _batches(read_targets(file), batch_size):
            response = client.post("/admin/v1/targets:batch", json={"targets": [item for _, item in batch]})
            if response.status_code != 201:
                progress.stop()
                _report_failure(console, file, batch, response, done)
                raise typer.Exit(1)
            done += len(batch)
            progress.update(task, completed=done)
    console.print(f"imported {done} targets from {file}")


def _report_failure(console: Console, file: Path, batch: list[tuple[int, dict[str, Any]]],
                    response: httpx.Response, done: int) -> None:
    try:
        error = response.json().get("error", {})
    except ValueError:
        error = {"message": response.text[:500]}
    console.print(f"[red]batch rejected ({response.status_code}): {error.get('message')}[/red]")
    for item in error.get("errors", [])[:20]:
        line = batch[item["index"]][0] if 0 <= item.get("index", -1) < len(batch) else "?"
        console.print(f"  {file}:{line}: {item.get('param') or ''} {item.get('message')}")
    console.print(f"{done} targets were imported before this batch; nothing of this batch was stored.")
