"""The compatibility sweep: every torchsmith operation on torchvision, timm and transformers models (``make sweep``).

A tool, not library code: it runs in ``.venv-interop`` with ``src/`` on ``PYTHONPATH`` and writes
``docs/compatibility.md`` and ``docs/compatibility.json``. See ``python -m sweep --help``.
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT / "tests") not in sys.path:  # tests/helpers.py: probe_snapshot, probe_differences, bits
    sys.path.insert(0, str(ROOT / "tests"))
