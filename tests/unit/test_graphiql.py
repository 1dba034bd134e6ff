"""The GraphiQL page must work with no internet: everything it loads ships in the package."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

import blueline.graphiql
from blueline.graphiql import ASSET_PATH, asset, render_page

ASSETS_DIR = Path(blueline.graphiql.__file__).parent / "assets"
# Ours, not vendored: these may not mention another origin at all.
OWN_ASSETS = ("blueline-graphiql.js", "blueline-graphiql.css")


class _References(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [value for name, value in attrs if name in ("src", "href") and value]


def page_references(page: str) -> list[str]:
    parser = _References()
    parser.feed(page)
    return parser.urls


def shipped_names() -> list[str]:
    return sorted(p.name for p in ASSETS_DIR.iterdir() if p.suffix in (".js", ".css"))


def test_every_asset_the_page_references_is_shipped() -> None:
    urls = [url for url in page_references(render_page()) if not url.startswith("data:")]
    assert len(urls) == 7
    for url in urls:
        assert url.startswith(f"{ASSET_PATH}/"), url
        found = asset(url.removeprefix(f"{ASSET_PATH}/"))
        assert found is not None, url
        body, media_type = found
        assert body
        assert media_type.startswith("text/css" if url.endswith(".css") else "text/javascript")


def test_page_carries_the_endpoint_and_nothing_external() -> None:
    page = render_page("/api/graphql")
    assert 'data-graphql-path="/api/graphql"' in page
    assert "http" not in page
    assert "//" not in page.replace("<!doctype html>", "")
    # Under a strict CSP an inline script or style would not run.
    assert re.search(r"<script>|<style|\sstyle=|\son[a-z]+=", page) is None
    assert "<noscript>" in page


@pytest.mark.parametrize("path", ["graphql", "//evil.example/graphql", "https://x/graphql"])
def test_page_only_points_at_this_origin(path: str) -> None:
    with pytest.raises(ValueError, match="path on this origin"):
        render_page(path)


def test_endpoint_path_is_escaped() -> None:
    page = render_page('/graphql"><script>alert(1)</script>')
    assert "<script>alert" not in page
    assert "&quot;&gt;&lt;script&gt;" in page


@pytest.mark.parametrize(
    "name",
    [
        "../__init__.py",
        "../../graphiql/__init__.py",
        "..%2F__init__.py",
        "/etc/passwd",
        str(ASSETS_DIR / "graphiql.min.js"),
        "licenses/react.LICENSE",
        "licenses/../graphiql.min.js",
        "./graphiql.min.js",
        "VERSIONS",
        "update_assets.sh",
        "graphiql.min.js.map",
        "GRAPHIQL.MIN.JS",
        "",
        ".",
        "..",
        "graphiql.min.js\x00.css",
    ],
)
def test_asset_refuses_anything_but_a_shipped_file_name(name: str) -> None:
    assert asset(name) is None


def test_asset_serves_the_shipped_bytes() -> None:
    found = asset("graphiql.min.js")
    assert found is not None
    assert found[0] == (ASSETS_DIR / "graphiql.min.js").read_bytes()
    assert found[1] == "text/javascript; charset=utf-8"


@pytest.mark.parametrize("name", shipped_names())
def test_no_asset_makes_the_browser_load_from_elsewhere(name: str) -> None:
    text = (ASSETS_DIR / name).read_text(encoding="utf-8")
    # Devtools would fetch maps we do not ship; update_assets.sh strips these.
    assert "sourceMappingURL" not in text
    assert "sourceURL=" not in text
    if name.endswith(".css"):
        assert "@import" not in text
        urls = re.findall(r"url\(\s*['\"]?([^'\")\s]*)", text)
        assert all(url.startswith("data:") for url in urls), set(urls) - {"data:"}
        assert "http" not in text
    if name in OWN_ASSETS:
        code = re.sub(r"^\s*//.*$", "", text, flags=re.MULTILINE)
        assert re.search(r"(https?:|wss?:)?//[\w.-]", code) is None


def test_every_vendored_file_is_listed_with_its_version_and_licence() -> None:
    rows = [
        line.split("\t")
        for line in (ASSETS_DIR / "VERSIONS").read_text(encoding="utf-8").splitlines()
        if line and not line.startswith("#")
    ]
    listed = {row[0]: row for row in rows}
    assert sorted(listed) == sorted(set(shipped_names()) - set(OWN_ASSETS))
    for file, package, version, licence, integrity in rows:
        assert re.fullmatch(r"\d+\.\d+\.\d+", version), file
        assert licence == "MIT", file
        assert integrity.startswith("sha512-"), file
        assert (ASSETS_DIR / "licenses" / f"{package}.LICENSE").is_file(), package
