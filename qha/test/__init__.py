"""
Tests for qha: C{trial qha}.

The modules here are synchronous unit tests, each named after the module it
tests (C{test_role} for L{qha.ha.role}, C{test_events} for
L{qha.changes.events}, C{test_link} for L{qha.ha.link}, C{test_primary} for
L{qha.ha.primary}, ...). The harnesses they share are in L{qha.test.support}
and the public fakes in L{qha.testing}; no test module imports another.
Tests that start real processes (C{twistd qha}, etcd) are in
L{qha.test.integration}.
"""

__all__: list[str] = []
