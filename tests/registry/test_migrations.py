"""Schema migrations: the migrated schema is the one the code declares, and a migration that
builds a derived table (0005, search terms) fills it from the data already there."""

from __future__ import annotations

import pytest
import sqlalchemy
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from test_api import World, concept_bytes, world  # noqa: F401 — the fixture

from pfx_registry.db import metadata
from pfx_registry.migrate import alembic_config, upgrade

BACKENDS = ["folder+sqlite", "folder+postgres"]


@pytest.mark.parametrize("world", BACKENDS, indirect=True)
def test_migrated_schema_matches_the_declared_tables(world: World) -> None:
    engine = world.client.app.state.registry.engine
    with engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), metadata)
    # the full-text index (SQLite's FTS5 tables, PostgreSQL's GIN expression index) is created by
    # hand and unknown to the metadata; nothing else may differ
    assert [d for d in differences if not _is_full_text_index(d)] == []


def _is_full_text_index(difference: object) -> bool:
    return (
        isinstance(difference, tuple)
        and difference[0] in ("remove_table", "remove_index")
        and difference[1].name.startswith(("search_fts", "search_documents_fts"))
    )


@pytest.mark.parametrize("world", BACKENDS, indirect=True)
def test_search_terms_are_built_from_existing_documents(world: World) -> None:
    alice = world.user("alice")
    for n, (name, description) in enumerate(
        [("kettle", "a copper kettle"), ("lamp", "a copper lamp"), ("copper", "a statue")]
    ):
        response = world.push(
            alice, f"alice/{name}:1", concept_bytes(70 + n), private=False, description=description
        )
        assert response.status_code == 201

    def names(**params: str) -> list[str]:
        found = world.client.get("/v1/search", params=params).json()["results"]
        return [result["name"] for result in found]

    expected = ["copper", "lamp", "kettle"]  # the name first (3), then newest first (1 each)
    assert names(q="copper") == expected
    engine = world.client.app.state.registry.engine
    config = alembic_config()
    with engine.begin() as connection:  # 0005's downgrade drops the table …
        config.attributes["connection"] = connection
        command.downgrade(config, "0004")
    assert "search_terms" not in sqlalchemy.inspect(engine).get_table_names()
    upgrade(engine)  # … and its upgrade rebuilds it from the documents
    assert names(q="copper") == expected
    assert names(q="copper", sort="recent") == expected
    assert names(q="statue") == ["copper"]
