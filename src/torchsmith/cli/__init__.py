"""The ``torchsmith`` command line: thin commands over the public API.

    $ torchsmith list 'resnet*'
    $ python -m torchsmith list --json

Exit codes: 0 success, 1 a torchsmith error (message on stderr), 2 bad usage.

One module per group of commands: ``models`` (list, build, spec-schema), ``checkpoints`` (inspect, convert,
diff, sign, verify), ``inspection`` (summary, trace, diagram), ``pretrained`` (pretrained, fetch); ``app`` holds the Typer app, error handling and
the entry point. Nothing imports this package.
"""

from . import checkpoints, inspection, models, pretrained  # noqa: F401 - each registers its commands on the app
from .app import app, main

__all__ = ["app", "main"]
