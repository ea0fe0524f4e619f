"""One app per test over the shared `db_url` database, a TestClient, and tokens per role."""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi import FastAPI

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from fastapi.testclient import TestClient

from controller.api import create_app
from controller.auth.manager import AuthManager
from controller.config import ControllerConfig, load_config
from controller.farm import Farm
from controller.observability.metrics import Metrics
from controller.store.engine import Store
from controller.store.models import metadata

SCENARIO = """\
apiVersion: ffrtmp.io/v1
kind: Scenario
metadata: {name: test1}
spec:
  command: [echo, "{word}"]
  defaults: {word: hello}
"""


@dataclass
class Clock:
    """A settable clock for auth (expiry, rate limits)."""

    now: datetime = field(default_factory=lambda: datetime.now(UTC))

    def __call__(self) -> datetime:
        return self.now

    def tick(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@dataclass
class Api:
    """An app over a database, its collaborators and a client."""

    app: FastAPI
    client: TestClient
    farm: Farm
    auth: AuthManager
    metrics: Metrics
    store: Store
    config: ControllerConfig
    clock: Clock

    def token(self, role: str = "admin", node: str | None = None, client: str | None = None,
              expires_minutes: float | None = None) -> str:
        return self.auth.issue_token(client or f"{role}-client", role, node, expires_minutes,
                                     now=self.clock()).token

    def headers(self, role: str = "admin", node: str | None = None, client: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(role, node, client)}"}

    def counts(self) -> dict[str, int]:
        """Rows per table: what a refused request must leave unchanged."""
        with self.store.read() as session:
            return {t.name: session.execute(sa.select(sa.func.count()).select_from(t)).scalar_one()
                    for t in metadata.sorted_tables if t.name != "auth_tokens"}


def build_api(url: str, **config: Any) -> Api:
    overrides: dict[str, Any] = {"database": {"url": url}}
    for section, values in config.items():
        overrides[section] = values
    cfg = load_config(None, env={}, overrides=overrides)
    store = Store.from_config(cfg.database)
    clock = Clock()
    metrics = Metrics()
    farm = Farm(store, cfg)
    auth = AuthManager(store, cfg.auth, metrics)
    app = create_app(farm, auth, metrics, clock=clock)
    client = TestClient(app)
    return Api(app, client, farm, auth, metrics, store, cfg, clock)


@pytest.fixture
def make_api(db_url: str) -> Iterator[Any]:
    """Build an app over the test database with config overrides (camelCase sections)."""
    built: list[Api] = []

    def make(**config: Any) -> Api:
        api = build_api(db_url, **config)
        built.append(api)
        return api

    yield make
    for api in built:
        api.client.close()
        api.store.dispose()


@pytest.fixture
def api(make_api: Any) -> Api:
    """Auth on, generous limits."""
    result: Api = make_api(auth={"rateLimitPerMinute": 100_000, "failedAuthPerMinute": 100_000})
    return result


@pytest.fixture
def sqlite_url(tmp_path: Path, _sqlite_template: Path) -> str:
    """A migrated SQLite database only (for the slower, property-based tests)."""
    path = tmp_path / "api.db"
    shutil.copyfile(_sqlite_template, path)
    return f"sqlite:///{path}"


@pytest.fixture
def sqlite_api(sqlite_url: str) -> Iterator[Api]:
    """Auth off, SQLite: for property-based tests that send hundreds of bodies."""
    api = build_api(sqlite_url, auth={"enabled": False})
    yield api
    api.client.close()
    api.store.dispose()
