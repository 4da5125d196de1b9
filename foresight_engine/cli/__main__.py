"""`python -m foresight_engine.cli ...` is `foresight-engine ...`."""
import sys

from . import main

sys.exit(main())
