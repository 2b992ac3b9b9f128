"""Fixtures of the cache tests: this test's home's result store, closed after it."""

import pytest

from daskflow.cache.store import close_store, get_store


@pytest.fixture
def store(daskflow_home):
    s = get_store(daskflow_home)
    yield s
    close_store(daskflow_home)
