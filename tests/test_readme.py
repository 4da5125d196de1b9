"""The README is true: the blocks marked `<!-- readme-test -->` run as written (bash blocks in bash, python blocks
in Python), in order, in one fresh directory that holds the repository's `assets/`, like a reader following along
from the repository root; `foresight-engine` and `python` there are this checkout's. Paths it names exist in the
repository, and it names no machine's absolute paths."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MARKER = "<!-- readme-test -->"
BLOCK = re.compile(r"^" + re.escape(MARKER) + r"\n```(bash|python)\n(.*?)^```$", re.M | re.S)


def marked_blocks() -> list[tuple[str, str, int]]:
    text = README.read_text()
    return [(m.group(1), m.group(2), text.count("\n", 0, m.start()) + 1) for m in BLOCK.finditer(text)]


BLOCKS = marked_blocks()


@pytest.fixture(scope="module")
def reader(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """A directory like a checkout (assets/) and an environment whose `foresight-engine`/`python` run this tree."""
    home = tmp_path_factory.mktemp("reader")
    (home / "assets").symlink_to(ROOT / "assets", target_is_directory=True)
    bin_dir = home / ".bin"
    bin_dir.mkdir()
    for name, command in (("python", f'exec "{sys.executable}" "$@"'),
                          ("foresight-engine", f'exec "{sys.executable}" -m foresight_engine.cli "$@"')):
        (bin_dir / name).write_text(f"#!/bin/sh\n{command}\n")
        (bin_dir / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(ROOT),
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"), "COLUMNS": "120"}
    return home, env


def test_the_readme_marks_runnable_blocks():
    assert len(BLOCKS) >= 6, BLOCKS
    assert {lang for lang, _, _ in BLOCKS} == {"bash", "python"}


@pytest.mark.parametrize("lang, code, line", BLOCKS, ids=[f"README.md:{line}" for _, _, line in BLOCKS])
def test_readme_block_runs(lang, code, line, reader):
    home, env = reader
    script = home / f"block-{line}.{'sh' if lang == 'bash' else 'py'}"
    script.write_text(code)
    command = ["bash", "-euo", "pipefail", str(script)] if lang == "bash" else [sys.executable, str(script)]
    done = subprocess.run(command, cwd=home, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"README.md line {line} failed:\n{code}\n--- stdout\n{done.stdout}\n--- stderr\n" \
                                 f"{done.stderr[-4000:]}"


def test_paths_in_the_readme_exist_in_the_repository():
    text = README.read_text()
    assert "../" not in text and "/work/" not in text, "paths outside the repository or of one machine"
    links = re.findall(r"\]\(([^)#:]+)\)", text)  # [text](relative/path)
    named = re.findall(r"`((?:foresight_engine|tests|bench|docs|assets)/[\w./-]*\w)`", text)
    files = {"constraints.txt", "pyproject.toml", "Makefile"} & set(re.findall(r"`([\w.]+)`", text))
    missing = [p for p in {*links, *named, *files} if not (ROOT / p).exists()]
    assert not missing, missing
