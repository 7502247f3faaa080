"""The tool repository: domain YAML model and loader, runtime, MCP client and server, tool specs."""

from agentfactory.records import ToolSpec
from agentfactory.tools.domain import Domain, TaskTemplate, ToolDef
from agentfactory.tools.loader import (
    domain_files,
    domain_json_schema,
    find_domain,
    load_categories,
    load_domain,
)
from agentfactory.tools.mcp_client import McpConnection, McpServerConfig, harvest_mcp, load_mcp_servers
from agentfactory.tools.runtime import ToolResult, ToolRuntime

__all__ = [
    "Domain",
    "McpConnection",
    "McpServerConfig",
    "TaskTemplate",
    "ToolDef",
    "ToolResult",
    "ToolRuntime",
    "ToolSpec",
    "domain_files",
    "domain_json_schema",
    "find_domain",
    "harvest_mcp",
    "load_categories",
    "load_domain",
    "load_mcp_servers",
]
