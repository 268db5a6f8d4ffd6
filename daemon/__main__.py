"""`python -m daemon …`: the same commands as the `cohere-transcribe` console script (daemon.cli)."""

import sys

from daemon.cli import main

sys.exit(main())
