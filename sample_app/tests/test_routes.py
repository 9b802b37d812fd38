import os

import pytest

import sampleapp


def test_test_route(client):
    r = client.get("/test")
    assert r.status_code == 200
    assert r.data == b"hello world"


def test_index_lists_routes(client):
    body = client.get("/").get_json()
    assert body["app"] == "sampleapp"
    assert "/healthz" in body["routes"]


def test_healthz_reports_version_port_pid(client):
    body = client.get("/healthz", base_url="http://localhost:8003").get_json()
    assert body == {
        "status": "ok",
        "version": sampleapp.__version__,
        "port": 8003,
        "pid": os.getpid(),
        "client": "127.0.0.1",
    }


def test_healthz_prefers_configured_port():
    app = sampleapp.create_app({"SERVE_PORT": 8123})
    assert app.test_client().get("/healthz").get_json()["port"] == 8123


def test_healthz_port_from_app_port_env(monkeypatch):
    monkeypatch.setenv("APP_PORT", "8007")
    app = sampleapp.create_app()
    assert app.test_client().get("/healthz", base_url="http://localhost:80").get_json()["port"] == 8007


def test_version_comes_from_package_metadata():
    assert sampleapp.__version__ != "0.0.0+src"


@pytest.mark.parametrize("seconds", ["0", "0.2"])
def test_sleep_within_bound(client, seconds):
    r = client.get(f"/sleep?seconds={seconds}")
    assert r.status_code == 200
    assert r.get_json() == {"slept": float(seconds)}


@pytest.mark.parametrize("seconds", ["-1", "0.6", "1e9", "abc", "nan"])
def test_sleep_rejects_out_of_bound(client, seconds):
    assert client.get(f"/sleep?seconds={seconds}").status_code == 400


def test_echo_counts_body(client):
    r = client.post("/echo", data=b"x" * 1234)
    assert r.get_json() == {"received": 1234}


def test_unknown_route_is_404(client):
    assert client.get("/nope").status_code == 404
