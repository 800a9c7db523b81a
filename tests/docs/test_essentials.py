"""The essentials a new user needs are documented, and documented as the code behaves: every option
of ``init()``, every backend option, ``strict``, ``clock``, catalogs, ``usage_history``, the outbox
file's real name, and every public name in the API reference."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

import polar_metering
from polar_metering import MeteringConfig
from polar_metering.backends._engine.backend import LocalEngine
from polar_metering.backends._polar._backend import PolarBackend, default_outbox_path
from polar_metering.backends._polar._sdk import PolarSettings

DOCS = Path(__file__).resolve().parents[2] / "docs"
CONFIGURATION = (DOCS / "configuration.md").read_text()


@pytest.mark.parametrize("option", list(MeteringConfig.__dataclass_fields__))
def test_every_init_option_is_documented(option: str) -> None:
    assert f"| `{option}`" in CONFIGURATION, f"docs/configuration.md: no row for {option}"


def _backend_options(cls: type) -> list[str]:
    params = inspect.signature(cls.__init__).parameters
    return [
        n for n, p in params.items() if p.kind is p.KEYWORD_ONLY and n not in {"catalog", "clock", "config"}
    ]


@pytest.mark.parametrize(
    "option", [*_backend_options(PolarBackend), "create_schema", "busy_timeout_ms", "echo"]
)
def test_every_backend_option_is_documented(option: str) -> None:
    assert f"| `{option}`" in CONFIGURATION, f"docs/configuration.md: no row for backend option {option}"


def test_the_engine_options_documented_are_the_engine_s() -> None:
    source = inspect.getsource(LocalEngine.__init__)
    known = set(re.search(r"set\(options\) - \{([^}]*)\}", source).group(1).replace('"', "").split(", "))  # type: ignore[union-attr]
    assert known == {"create_schema", "busy_timeout_ms", "echo"}


@pytest.mark.parametrize("topic", ["strict=True", "clock=", "load_catalog", "metering.toml", "usage_history"])
def test_essentials_have_a_section(topic: str) -> None:
    assert f"### `{topic}" in CONFIGURATION or f"`{topic}`" in CONFIGURATION.split("## `backend_options`")[0]


def test_the_outbox_file_names_are_the_real_ones() -> None:
    names = {
        default_outbox_path(PolarSettings("t", "production")),
        default_outbox_path(PolarSettings("t", "sandbox")),
        default_outbox_path(PolarSettings("t", "production", "http://127.0.0.1:8765")),
    }
    assert names == {
        "polar-metering-outbox-production.db",
        "polar-metering-outbox-sandbox.db",
        "polar-metering-outbox-127-0-0-1-8765.db",
    }
    for name in names:
        assert f"`{name}`" in CONFIGURATION
    # Every other page that names an outbox file names one of these (or the DeliveryConfig default,
    # or the per-environment pattern).
    allowed = names | {"polar-metering-outbox.db", "polar-metering-outbox-<environment>.db"}
    for page in [*DOCS.glob("*.md"), DOCS.parent / "README.md"]:
        for found in re.findall(r"polar-metering-outbox[\w<>\-]*\.db", page.read_text()):
            assert found in allowed, f"{page.name} names an outbox file {found!r} the code never uses"


def test_the_api_reference_lists_every_public_name() -> None:
    api = (DOCS / "api.md").read_text()
    for name in polar_metering.__all__:
        if name in {"__version__", "aio", "testing"}:
            assert name == "__version__" or f"::: polar_metering.{name}" in api
            continue
        assert f"::: polar_metering.{name}\n" in api, f"docs/api.md does not document {name}"
