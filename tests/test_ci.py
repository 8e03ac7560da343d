"""CI runs the README's test command, and that command runs the whole suite, slow cases included."""

import re
import shlex

from golden import ROOT


def _ci_command() -> str:
    """The command line of ``.ci/run`` (comments, ``set`` and ``cd`` aside)."""
    lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    commands = [line for line in lines if line and not line.startswith(("#", "set ", "cd "))]
    assert len(commands) == 1, commands
    return commands[0]


def test_readme_test_command_is_what_ci_runs():
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("Install and run the tests"):]
    block = re.search(r"```bash\n(.*?)\n```", section, re.S).group(1).strip()
    assert block == _ci_command()


def test_ci_deselects_nothing(pytestconfig):
    """Neither the command nor pytest's configured options leave a marker out; the fast selection
    for development is a documented option, not the default."""
    command = shlex.split(_ci_command())
    pytest_args = command[command.index("pytest") + 1:]
    assert not {"-m", "-k", "--deselect", "--ignore"} & set(pytest_args), pytest_args
    addopts = pytestconfig.getini("addopts")
    assert not {"-m", "-k", "--deselect", "--ignore"} & set(addopts), addopts
    markers = {m.split(":")[0] for m in pytestconfig.getini("markers")}
    assert "slow" in markers
    assert 'python -m pytest -q -m "not slow"' in (ROOT / "README.md").read_text()
