"""``python -m convcore``: the conv command."""

from convcore.cli import run

run()
