"""`python -m daemon …`: the same commands as the `cohere-transcribe` console script (daemon.cli)."""

import sys

from daemon.cli import main

if __name__ == "__main__":
    sys.exit(main())
