"""
Tests for qha_bench: C{trial qha_bench}.
"""

__all__: list[str] = []
