import pytest

from sampleapp import create_app


@pytest.fixture()
def client():
    app = create_app({"TESTING": True, "MAX_SLEEP": 0.5})
    return app.test_client()
