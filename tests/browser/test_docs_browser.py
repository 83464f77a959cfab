"""/docs and /redoc render in headless chromium with every request outside the API refused: their scripts and
styles come from the package, not from a CDN (FastAPI's default pages stayed blank without internet)."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, Route, expect

from tests.browser.conftest import ConsoleErrors
from tests.conftest import ApiServer

pytestmark = pytest.mark.browser


def offline(page: Page, api: ApiServer) -> list[str]:
    """Refuse (and list) every request that does not go to the API under test."""
    refused: list[str] = []

    def handle(route: Route) -> None:
        if route.request.url.startswith(api.url):
            route.continue_()
        else:
            refused.append(route.request.url)
            route.abort()

    page.route("**/*", handle)
    return refused


def test_swagger_ui_renders_every_route_offline(page: Page, api: ApiServer, console_errors: ConsoleErrors) -> None:
    refused = offline(page, api)
    page.goto(f"{api.url}/docs")
    expect(page.locator(".swagger-ui .opblock-summary-path", has_text="/v1/events").first).to_be_visible()
    expect(page.locator(".swagger-ui .opblock-summary-path", has_text="/v1/chat/completions").first).to_be_visible()
    assert page.locator(".swagger-ui .opblock").count() >= 10
    assert refused == [] and console_errors == []


def test_redoc_renders_offline(page: Page, api: ApiServer, console_errors: ConsoleErrors) -> None:
    refused = offline(page, api)
    page.goto(f"{api.url}/redoc")
    expect(page.get_by_text("/v1/users/{user_id}/profile").first).to_be_attached()
    # ReDoc's own "API docs by Redocly" badge is an image from its CDN: decoration, the page works without it.
    assert [u for u in refused if not u.startswith("https://cdn.redoc.ly/redoc/logo")] == []
    assert [e for e in console_errors if "Failed to load resource" not in e or not refused] == []


def test_without_the_package_the_api_still_starts_and_docs_fall_back_to_the_cdn(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A checkout updated without `make install` lacks fastapi-offline: the docs page must not take the API
    down with it."""
    import builtins  # noqa: PLC0415

    from fastapi import FastAPI  # noqa: PLC0415
    from fastapi.testclient import TestClient  # noqa: PLC0415

    from service.app import add_docs  # noqa: PLC0415

    real = builtins.__import__

    def no_offline(name: str, *args: object, **kw: object) -> object:
        if name == "fastapi_offline":
            raise ImportError(name)
        return real(name, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(builtins, "__import__", no_offline)
    app = FastAPI(docs_url=None, redoc_url=None)
    add_docs(app)
    page = TestClient(app).get("/docs")
    assert page.status_code == 200 and "cdn.jsdelivr.net" in page.text
