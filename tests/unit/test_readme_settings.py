"""The README's configuration table names every setting the service reads."""

from __future__ import annotations

import re
from pathlib import Path

from blueline.settings import Settings

README = Path(__file__).resolve().parents[2] / "README.md"


def test_every_setting_is_in_the_configuration_table() -> None:
    text = README.read_text()
    section = text.split("## Configuration\n", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"`([A-Z][A-Z0-9_]+)`", section)) - {"BLUELINE_"}
    expected = {name.upper() for name in Settings.model_fields}
    assert expected - documented == set(), "settings missing from the README"
    assert documented - expected == set(), "the README documents settings that do not exist"
