"""`unlearn-gateway eval` (also `python -m unlearn_eval`): prove a deployment forgot its targets.

Exit status: 0 when every configuration under test passes the thresholds, 1 when one fails
(CI gates on it), 2 for bad arguments or unreadable inputs.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from gateway.settings import DEFAULT_REFUSAL
from unlearn_eval import local, plots, probeset, report, targets as targets_mod
from unlearn_eval.client import Endpoint, root_url
from unlearn_eval.runner import ANSWERS_FILE, AnswerLog, Plan, new_progress, run_plans
from unlearn_eval.summary import Thresholds, reference_filter, summarise, verdict

REFERENCE = "reference"
_Rate = Annotated[float, typer.Option(min=0.0, max=1.0)]


def _remote_plan(name: str, url: str, api_key: str | None, model: str | None, refusal_text: str) -> Plan:
    @contextmanager
    def open_endpoint():
        yield Endpoint(name=name, base_url=url, model=model, api_key=api_key, refusal_text=refusal_text)

    return Plan(name=name, identity={"url": url, "model": model}, refusal_text=refusal_text, open=open_endpoint)


def _local_plan(name: str, config: local.Configuration, engine: local.Engine, targets: list[dict],
                log) -> Plan:
    from gateway.settings import Settings

    return Plan(name=name, identity=local.identity(config), refusal_text=Settings(**config.settings).refusal_text,
                open=lambda: local.serve(config, engine, targets, log))


def eval_command(
    local_mode: Annotated[bool, typer.Option("--local", help="Embedded engine behind fresh local gateways")] = False,
    base_url: Annotated[Optional[str], typer.Option(help="OpenAI-compatible endpoint under test (…/v1 or root)")
                        ] = None,
    api_key: Annotated[Optional[str], typer.Option(envvar="UNLEARN_EVAL_API_KEY", help="Client key of --base-url")
                       ] = None,
    model: Annotated[Optional[str], typer.Option(help="Model id (default: the endpoint's first)")] = None,
    name: Annotated[str, typer.Option(help="Name of the --base-url configuration in the report")] = "gateway",
    configs: Annotated[str, typer.Option(help=f"--local configurations: {', '.join(local.CONFIGURATIONS)}")] = "guard",
    admin_url: Annotated[Optional[str], typer.Option(help="Admin API root (default: --base-url's root)")] = None,
    admin_token: Annotated[Optional[str], typer.Option(envvar="UNLEARN_ADMIN_TOKEN", help="Admin bearer token")] = None,
    targets: Annotated[str, typer.Option(help="dev | dev:N | deployment | FILE (.jsonl/.json/.csv)")] = "dev",
    register: Annotated[bool, typer.Option("--register", help="Register the file's targets in the deployment")] = False,
    methods: Annotated[Optional[str], typer.Option(help="With --register: the targets' methods (comma list)")] = None,
    probes: Annotated[Optional[Path], typer.Option(help="Probe file (JSONL) instead of curated/generated")] = None,
    families: Annotated[Optional[str], typer.Option(help="Comma list of families / neighbour / general")] = None,
    reference_url: Annotated[Optional[str], typer.Option(help="Raw reference endpoint (default: embedded raw model)")
                             ] = None,
    reference_api_key: Annotated[Optional[str], typer.Option(help="Client key of --reference-url")] = None,
    reference_model: Annotated[Optional[str], typer.Option(help="Model id at --reference-url")] = None,
    out: Annotated[Path, typer.Option(help="Output directory (resumable)")] = Path("eval-out"),
    max_tokens: Annotated[int, typer.Option(min=1, help="max_tokens of every request")] = 64,
    temperature: Annotated[float, typer.Option(min=0.0, max=2.0)] = 0.0,
    threads: Annotated[int, typer.Option(min=0, help="Embedded engine torch threads (0: all cores)")] = 1,
    timeout: Annotated[float, typer.Option(min=1.0, help="Seconds per request")] = 300.0,
    refusal_text: Annotated[str, typer.Option(help="The --base-url gateway's refusal text")] = DEFAULT_REFUSAL,
    max_leak: _Rate = Thresholds.max_leak,
    min_utility: _Rate = Thresholds.min_utility,
    max_second_turn_leak: _Rate = Thresholds.max_second_turn_leak,
    max_tell: _Rate = Thresholds.max_tell,
    min_consistency: _Rate = Thresholds.min_consistency,
    max_error_rate: _Rate = Thresholds.max_error_rate,
    write_plots: Annotated[bool, typer.Option("--plots/--no-plots", help="Write the PNG plots")] = True,
) -> None:
    """Run probes through a deployment (or --local gateways) and a raw reference; write answers,
    summary.json, report.md, junit.xml and plots to --out; exit 1 when the verdict is FAIL."""
    if local_mode == bool(base_url):
        raise typer.BadParameter("give exactly one of --local and --base-url")
    config_names = [c.strip() for c in configs.split(",") if c.strip()]
    unknown = [c for c in config_names if c not in local.CONFIGURATIONS]
    if local_mode and (unknown or not config_names):
        raise typer.BadParameter(f"unknown configurations {unknown}; known: {', '.join(local.CONFIGURATIONS)}")
    if register and targets == "deployment":
        raise typer.BadParameter("--register registers the targets of a file or the dev set, not the deployment's")
    if name == REFERENCE:
        raise typer.BadParameter(f"--name {REFERENCE!r} is the reference's")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    root = root_url(base_url) if base_url else None
    admin = root_url(admin_url) if admin_url else root
    try:
        target_list, curated = targets_mod.resolve(targets, admin_url=admin, token=admin_token)
        probe_list, skipped = probeset.build(target_list, curated=curated, probes_file=probes, families=(
            [f.strip() for f in families.split(",") if f.strip()] if families else None))
    except (targets_mod.TargetError, probeset.ProbeError) as exc:
        raise typer.BadParameter(str(exc)) from None
    if register:
        if not admin:
            raise typer.BadParameter("--register needs --base-url or --admin-url")
        import httpx

        try:
            with httpx.Client(base_url=admin, timeout=timeout) as http:
                targets_mod.register(http, target_list, admin_token,
                                     [m.strip() for m in methods.split(",")] if methods else None)
        except (targets_mod.TargetError, httpx.HTTPError) as exc:
            raise typer.BadParameter(f"--register: {exc}") from None
    console = Console()
    engine = local.Engine(threads or None)
    ref_plan = (_remote_plan(REFERENCE, root_url(reference_url), reference_api_key, reference_model, DEFAULT_REFUSAL)
                if reference_url else _local_plan(REFERENCE, local.CONFIGURATIONS[local.RAW], engine, target_list,
                                                  console.log))
    plans = ([_local_plan(c, local.CONFIGURATIONS[c], engine, target_list, console.log) for c in config_names]
             if local_mode else [_remote_plan(name, root, api_key, model, refusal_text)])
    thresholds = Thresholds(max_leak, min_utility, max_second_turn_leak, max_tell, min_consistency, max_error_rate)
    run = {"reference": reference_url or "embedded raw model (configuration none)",
           "targets": [t["name"] for t in target_list], "configurations": [p.name for p in plans],
           "max_tokens": max_tokens, "temperature": temperature, "thresholds": thresholds.as_dict(),
           "probes": len(probe_list), "not_generated": skipped}
    try:
        code = _run(console, out, probe_list, ref_plan, plans, run, thresholds, targets=target_list,
                    max_tokens=max_tokens, temperature=temperature, timeout=timeout, write_plots=write_plots)
    finally:
        engine.close()
    raise typer.Exit(code)


def _run(console: Console, out: Path, probe_list: list[dict], ref_plan: Plan, plans: list[Plan], run: dict,
         thresholds: Thresholds, *, targets: list[dict], max_tokens: int, temperature: float, timeout: float,
         write_plots: bool) -> int:
    """Ask what is missing, score, write the output directory; the exit code of the verdict."""
    out.mkdir(parents=True, exist_ok=True)
    report.write_json(out / "probes.json", probe_list)
    with new_progress(console) as progress:
        results = run_plans([ref_plan, *plans], probe_list, AnswerLog(out / ANSWERS_FILE), targets=targets,
                            max_tokens=max_tokens, temperature=temperature, timeout=timeout,
                            console_log=console.log, progress=progress)
    kept, dropped = reference_filter(probe_list, results[REFERENCE], ref_plan.refusal_text)
    refusals = {p.name: p.refusal_text for p in [ref_plan, *plans]}
    summaries = {name: summarise(probe_list, results[name], kept, refusals[name]) for name in refusals}
    verdicts = {p.name: verdict(summaries[p.name], thresholds) for p in plans}
    written = plots.write_plots(summaries, out) if write_plots else []
    leaks = {p.name: report.leaking_answers(probe_list, results[p.name], kept, p.refusal_text) for p in plans}
    report.write_json(out / "summary.json", {
        "run": run, "dropped": dropped, "summaries": summaries, "pass": not any(verdicts.values()), "plots": written,
        "verdicts": {k: {"pass": not v, "failures": v} for k, v in verdicts.items()}})
    rows = report.probe_rows(probe_list)
    (out / "report.md").write_text(report.markdown(run, summaries, verdicts, dropped, rows, len(probe_list), written,
                                                   leaks), encoding="utf-8")
    (out / "junit.xml").write_text(report.junit(probe_list, results, kept, dropped, verdicts, refusals),
                                   encoding="utf-8")
    console.print(report.console_table(summaries, rows))
    for line in report.dropped_lines(dropped, len(probe_list)):
        console.print(line)
    for s in run["not_generated"]:
        console.print(f"- not generated for {s['target']}: {s['family']} ({s['reason']})")
    console.print("[bold]Verdict[/bold] (" + ", ".join(f"{k} {v}" for k, v in thresholds.as_dict().items()) + ")")
    for line in report.console_verdicts(verdicts):
        console.print(line)
    console.print(f"answers, summary.json, report.md, junit.xml{', plots' if written else ''} in {out}")
    return 1 if any(verdicts.values()) else 0


def main() -> None:
    """`python -m unlearn_eval`: the same command without the gateway's other sub-commands."""
    app = typer.Typer(add_completion=False)
    app.command()(eval_command)
    app()
