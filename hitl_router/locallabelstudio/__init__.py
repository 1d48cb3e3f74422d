"""Local Label Studio (in a venv of its own) for tests and the demo.

:mod:`.venv` installs it into ``<cache>/label-studio-<version>``; :mod:`.server` runs a
server with a known admin token, adds users with known tokens, and holds the CLI.
"""

from hitl_router.errors import LabelStudioError
from hitl_router.locallabelstudio.server import (
    DEFAULT_PASSWORD,
    DEFAULT_TOKEN,
    DEFAULT_USERNAME,
    LabelStudioServer,
    LocalLabelStudio,
    add_parser,
    health,
    stop_recorded,
    whoami,
)
from hitl_router.locallabelstudio.venv import LS_VERSION, executable, install, venv_dir

__all__ = [
    "DEFAULT_PASSWORD",
    "DEFAULT_TOKEN",
    "DEFAULT_USERNAME",
    "LS_VERSION",
    "LabelStudioError",
    "LabelStudioServer",
    "LocalLabelStudio",
    "add_parser",
    "executable",
    "health",
    "install",
    "stop_recorded",
    "venv_dir",
    "whoami",
]
