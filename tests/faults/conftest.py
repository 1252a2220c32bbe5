"""Each fault test gets a broker of its own: it kills, restarts and counts from empty."""

import pytest

from tests.conftest import own_broker

broker = pytest.fixture(own_broker, name="broker")
