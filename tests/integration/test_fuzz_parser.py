"""The Kimi K2 tool-call parser on 10,000 hypothesis-generated model outputs: zero crashes."""

import sys
from pathlib import Path

from hypothesis import HealthCheck, given, settings

sys.path.insert(0, str(Path(__file__).parents[1]))
from unit.test_fuzz import check_parse, fragments


@settings(max_examples=10_000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=fragments)
def test_tool_call_parser_10k_cases(text):
    check_parse(text)
