"""`agentfactory tools`: the tool repository (list, show, harvest MCP servers, dedup, synthesize, serve)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from agentfactory.cli.common import err, fail, out
from agentfactory.config import ConfigError

tools_app = typer.Typer(
    help="The tool repository: list and show tools, harvest MCP servers, serve a domain over MCP.",
    no_args_is_help=True,
)


def _all_specs() -> list:
    from agentfactory.tools import domain_files, load_domain

    specs = []
    for f in domain_files():
        try:
            specs += load_domain(f).tool_specs()
        except ConfigError as e:
            fail(e)
    return specs


@tools_app.command("list")
def tools_list(
    domain: Annotated[str | None, typer.Option(help="only this domain")] = None,
    category: Annotated[str | None, typer.Option(help="only this category")] = None,
) -> None:
    """List the tools of the shipped domains."""
    table = Table("tool", "domain", "category", "source", "description")
    specs = [s for s in _all_specs() if (domain in (None, s.domain)) and (category in (None, s.category))]
    for s in specs:
        table.add_row(s.name, s.domain, s.category, s.source, s.description[:60])
    out.print(table)
    out.print(f"{len(specs)} tools")


@tools_app.command("show")
def tools_show(
    name: Annotated[str, typer.Argument(help="tool name, or DOMAIN.TOOL when names collide")],
) -> None:
    """Print one tool's spec (OpenAI function format plus provenance) as JSON."""
    dom, _, tool = name.rpartition(".")
    hits = [s for s in _all_specs() if s.name == tool and dom in ("", s.domain)]
    if not hits:
        err.print(f"no tool named {name!r} (see `agentfactory tools list`)", markup=False)
        raise typer.Exit(1)
    typer.echo(json.dumps([s.model_dump(mode="json") for s in hits], indent=2, ensure_ascii=False))


@tools_app.command("harvest")
def tools_harvest(
    config: Annotated[Path, typer.Option("--config", help="MCP servers file")] = Path(
        "tools_repo/mcp_servers.yaml"
    ),
    only: Annotated[list[str] | None, typer.Option("--server", help="harvest only these servers")] = None,
    output: Annotated[
        Path | None, typer.Option("--out", "-o", help="write the ToolSpecs here (jsonl)")
    ] = None,
    strict: Annotated[bool, typer.Option(help="exit 1 if any server fails")] = False,
) -> None:
    """Connect to the listed MCP servers and turn their tools into ToolSpecs with provenance."""
    from agentfactory.tools import harvest_mcp, load_mcp_servers

    try:
        servers = [s for s in load_mcp_servers(config) if not only or s.name in only]
    except ConfigError as e:
        fail(e)
    specs, failed = [], []
    table = Table("server", "tools", "status")
    for server in servers:
        try:
            got = harvest_mcp(server)
        except Exception as e:  # a broken server is reported and skipped; the others go on
            failed.append(server.name)
            table.add_row(server.name, "0", f"[red]failed: {type(e).__name__}: {e}"[:120])
            continue
        specs += got
        table.add_row(server.name, str(len(got)), "[green]ok")
    out.print(table)
    if output:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text("".join(s.model_dump_json() + "\n" for s in specs))
        out.print(f"wrote {len(specs)} tools to {output}", highlight=False)
    if failed and (strict or not specs):
        raise typer.Exit(1)


@tools_app.command("dedup")
def tools_dedup(
    inputs: Annotated[
        list[Path] | None, typer.Argument(help="extra ToolSpec jsonl files (e.g. from harvest)")
    ] = None,
    near: Annotated[float, typer.Option(help="MinHash Jaccard threshold")] = 0.7,
    semantic: Annotated[float, typer.Option(help="embedding cosine threshold (0 disables)")] = 0.9,
    output: Annotated[Path | None, typer.Option("--out", "-o", help="write the report here (JSON)")] = None,
) -> None:
    """Deduplicate domain tools plus harvested/synthesized ones: exact, near (MinHash), semantic."""
    from agentfactory.records import ToolSpec
    from agentfactory.tools.dedup import dedup_tools

    specs = _all_specs()
    for path in inputs or []:
        specs += [
            ToolSpec.model_validate_json(line) for line in path.read_text().splitlines() if line.strip()
        ]
    report = dedup_tools(specs, near_threshold=near, semantic_threshold=semantic or None)
    table = Table("dropped", "kept", "reason", "score", title="Merged tools")
    for m in report.merged:
        table.add_row(m.dropped, m.kept, m.reason, f"{m.score:.2f}")
    out.print(table)
    out.print(report.counts())
    if output:
        output.write_text(report.model_dump_json(indent=2))


@tools_app.command("synth")
def tools_synth(
    model: Annotated[str, typer.Option(help="checkpoint dir (vLLM) or served model name (with --base-url)")],
    base_url: Annotated[
        str | None, typer.Option(help="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1")
    ] = None,
    categories: Annotated[
        list[str] | None, typer.Option("--category", help="categories (default: all)")
    ] = None,
    per_category: Annotated[int, typer.Option(help="domains proposed per category")] = 2,
    output: Annotated[
        Path, typer.Option("--out", "-o", help="where accepted domains and drafts.jsonl go")
    ] = Path("runs/toolsynth"),
    workers: Annotated[int, typer.Option(help="Ray workers (each builds its own engine)")] = 1,
    no_ray: Annotated[bool, typer.Option("--no-ray", help="run in this process")] = False,
) -> None:
    """LLM hierarchical tool synthesis: categories → domains → tool sets → validated domain YAML."""
    from agentfactory.llm.config import EngineConfig, build_engine
    from agentfactory.synth.toolsynth import ToolSynthConfig, synthesize_tools

    engine_cfg = EngineConfig(kind="openai" if base_url else "vllm", model=model, base_url=base_url)
    cfg = ToolSynthConfig(categories=categories, per_category=per_category)
    drafts = synthesize_tools(
        lambda: build_engine(engine_cfg), cfg, output, use_ray=not no_ray, workers=workers
    )
    table = Table("category", "domain", "stage", "accepted", "reason", title="Tool synthesis")
    for d in drafts:
        table.add_row(
            d.category, d.name, d.stage, "[green]yes" if d.accepted else "[red]no", (d.reason or "")[:70]
        )
    out.print(table)
    out.print(
        f"{sum(d.accepted for d in drafts)} of {len(drafts)} drafts accepted; report: {output / 'drafts.jsonl'}"
    )


@tools_app.command("serve-mcp")
def tools_serve_mcp(
    domain: Annotated[str, typer.Argument(help="a shipped domain name or a domain YAML file")],
    seed: Annotated[int, typer.Option(help="world seed (each client session gets its own copy)")] = 0,
    http: Annotated[
        int | None, typer.Option("--http", help="serve streamable HTTP on this port (default: stdio)")
    ] = None,
    host: Annotated[str, typer.Option(help="HTTP bind address")] = "127.0.0.1",
) -> None:
    """Serve a YAML domain as an MCP server over stdio (default) or streamable HTTP."""
    from agentfactory.tools import find_domain
    from agentfactory.tools.mcp_server import serve_http, serve_stdio

    try:
        d = find_domain(domain)
    except ConfigError as e:
        fail(e)
    if http is None:
        serve_stdio(d, seed)
    else:
        err.print(f"serving {d.name} on http://{host}:{http}/mcp", markup=False)
        serve_http(d, seed, host, http)
