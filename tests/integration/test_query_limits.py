"""Query depth, aliases and size are bounded, so one request cannot cost the server
more than a page of work."""

from __future__ import annotations

from tests.conftest import Api


async def test_queries_deeper_than_ten_levels_are_refused(api: Api) -> None:
    normal = await api.graphql("{ imessageSetups { edges { node { phoneLines { id } } } } }")
    assert "errors" not in normal
    body = await api.graphql("{ " + "x { " * 12 + "id" + " }" * 12 + " }")
    messages = " ".join(error["message"] for error in body["errors"])
    assert "depth" in messages
    assert body.get("data") is None


async def test_more_than_thirty_aliases_are_refused(api: Api) -> None:
    ok = (
        "{ "
        + " ".join(f"a{i}: imessageSetups(first: 1) {{ totalCount }}" for i in range(30))
        + " }"
    )
    assert "errors" not in await api.graphql(ok)
    too_many = (
        "{ "
        + " ".join(f"a{i}: imessageSetups(first: 1) {{ totalCount }}" for i in range(31))
        + " }"
    )
    body = await api.graphql(too_many)
    assert body.get("errors")
    assert body.get("data") is None


async def test_documents_over_two_thousand_tokens_are_refused(api: Api) -> None:
    fields = " ".join(["__typename"] * 2100)
    body = await api.graphql("{ " + fields + " }")
    assert body.get("errors")
    assert body.get("data") is None
