"""The image builds what the wheel ships (the wheel itself is installed and
run outside the checkout by .ci/wheel_check.py in CI)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def stages() -> list[str]:
    """The Dockerfile's build and runtime stages."""
    found = re.split(r"^FROM ", (ROOT / "Dockerfile").read_text(), flags=re.MULTILINE)[1:]
    assert len(found) == 2, "a build stage and a runtime stage"
    return found


def test_the_image_copies_every_package_the_wheel_ships() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    shipped = {name.split(".")[0] for name in project["tool"]["setuptools"]["packages"]}
    build_stage = stages()[0]
    copied = set(re.findall(r"^COPY (\w+) \./\1$", build_stage, flags=re.MULTILINE))
    assert shipped == copied, f"Dockerfile's build stage: missing {shipped - copied}"


def test_the_image_installs_the_built_wheel_as_a_non_root_user() -> None:
    build, runtime = stages()
    assert "pip wheel --no-deps" in build
    assert re.search(r"pip install /wheels/\*\.whl(?!\[)", runtime), "the wheel, no extras"
    assert " -e " not in runtime and "COPY . " not in runtime
    user = re.findall(r"^USER (\S+)", runtime, flags=re.MULTILINE)
    assert user and user[-1] not in ("root", "0")
