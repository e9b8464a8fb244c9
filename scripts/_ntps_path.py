"""Put this workflow's own ``src/`` first on ``sys.path``; every job script imports this first.

Snakemake runs a script from a copy under ``.snakemake/scripts/`` and, for a script on the local
disk, appends the script's original folder (this one) to ``sys.path``; that is how this module is
found. From here the package is found by its place in the workflow (``../src``), so a job imports
the ``ntps`` of the workflow it belongs to:

- without PYTHONPATH, which ``--sdm conda`` removes from every conda job's environment;
- when the workflow is a Snakemake ``module`` deployed from another folder (snakedeploy);
- ahead of any other installed ``ntps`` (an older copy, or the unrelated PyPI package of that name).

Where the workflow's files are not on the local disk (a module loaded from a remote git host),
there is no ``src/`` here and the package must be installed in the job's environment instead
(``pip install ntps-workflow``, see docs/running.md, "Deploying").
"""

import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
if (SRC / "ntps").is_dir() and str(SRC) not in sys.path[:1]:
    sys.path.insert(0, str(SRC))
