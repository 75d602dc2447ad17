"""The test suite; ROOT is the repository root."""

import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent
