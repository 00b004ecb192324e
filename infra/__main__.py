"""`pulumi up` runs this file (Pulumi.yaml: `main: infra/`); everything is in infra/program.py."""

import sys
from pathlib import Path

# The repository root, so that `infra` and `cesar` import the same way under Pulumi as in the
# tests (uv's editable install of the project puts it on sys.path too; this makes it certain).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from infra.program import main  # noqa: E402

main()
