"""
Tests for qha: C{trial qha}.
"""

__all__: list[str] = []
