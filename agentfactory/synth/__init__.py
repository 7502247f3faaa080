"""Agentic data synthesis: agents, tasks, user/tool simulation, episodes, judge, Ray pipeline."""
