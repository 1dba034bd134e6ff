"""The checked-in schema.graphql is what the code serves, so frontends can generate
types from it."""

from __future__ import annotations

from pathlib import Path

from blueline.api.schema import build_schema

SCHEMA_FILE = Path(__file__).resolve().parents[2] / "schema.graphql"


def test_checked_in_schema_matches_the_code() -> None:
    expected = build_schema().as_str() + "\n"
    assert SCHEMA_FILE.read_text(encoding="utf-8") == expected, (
        "schema.graphql is out of date: run `make schema` and commit the result"
    )


def test_schema_names_what_the_contract_promises() -> None:
    sdl = SCHEMA_FILE.read_text(encoding="utf-8")
    for name in (
        "imessageSetups(first: Int = 20, after: String = null, status: IMessageSetupStatus = null)",
        "imessageSetup(id: ID!): IMessageSetup",
        "node(id: ID!): Node",
        "createImessageSetup(input: CreateImessageSetupInput!): CreateImessageSetupPayload!",
        "requestImessagePhoneLine(input: RequestImessagePhoneLineInput!)",
        "phoneLineUpdates(setupId: ID = null, after: String = null): PhoneLineUpdate!",
        "type UserError",
        "phoneLineCount: Int!",
        "updateImessageSetup(input: UpdateImessageSetupInput!): UpdateImessageSetupPayload!",
        "suspendImessageSetup(input: SuspendImessageSetupInput!): SuspendImessageSetupPayload!",
        "reactivateImessageSetup(input: ReactivateImessageSetupInput!)",
        "closeImessageSetup(input: CloseImessageSetupInput!): CloseImessageSetupPayload!",
        "releaseImessagePhoneLine(input: ReleaseImessagePhoneLineInput!)",
        "imessageSetupUpdates(setupId: ID = null, after: String = null): IMessageSetupUpdate!",
        "auditEvents(first: Int = 20, after: String = null, setupId: ID = null)",
        "enum UserErrorCode",
        "hasPreviousPage: Boolean!",
        "startCursor: String",
        'scalar DateTime @specifiedBy(url: "https://datatracker.ietf.org/doc/html/rfc3339")',
        "enum IMessageSetupChange",
        "phoneLines(",
        "includeReleased: Boolean = false",
    ):
        assert name in sdl, name


def test_production_schema_has_no_introspection_or_suggestions() -> None:
    schema = build_schema(production=True)
    result = schema.execute_sync("{ __schema { types { name } } }")
    assert result.errors
    typo = schema.execute_sync("{ imessageSetupz { totalCount } }")
    assert typo.errors
    assert "Did you mean" not in typo.errors[0].message
    development = build_schema().execute_sync("{ imessageSetupz { totalCount } }")
    assert development.errors
    assert "Did you mean" in development.errors[0].message
