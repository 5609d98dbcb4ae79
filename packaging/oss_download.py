"""Entry point of the `oss-download` executable: the terminal tool, which runs the core without Prefect."""
import sys

from flows.cli import main

sys.exit(main())
