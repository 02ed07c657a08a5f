import pytest

from .helpers import POLICIES


@pytest.fixture(params=POLICIES)
def policy(request):
    return request.param
