"""The tool repository: domain YAML model and loader, expression language, tool specs."""

from agentfactory.records import ToolSpec
from agentfactory.tools.domain import Domain, TaskTemplate, ToolDef
from agentfactory.tools.loader import domain_files, domain_json_schema, load_categories, load_domain

__all__ = [
    "Domain",
    "TaskTemplate",
    "ToolDef",
    "ToolSpec",
    "domain_files",
    "domain_json_schema",
    "load_categories",
    "load_domain",
]
