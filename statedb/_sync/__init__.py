# Generated from statedb/_async/__init__.py by `python -m tests.unasync`: edit that file, not this one.
"""Client factory and repository, as twins: statedb/_async (the source) and statedb/_sync.

statedb/_sync is generated from statedb/_async by ``python -m tests.unasync``; the test
suite fails when the two differ, so the twins cannot drift apart.
"""
