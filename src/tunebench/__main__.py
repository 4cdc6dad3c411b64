"""`python -m tunebench ...`: what the workflow's jobs run (the interpreter that started it)."""

import sys

from tunebench.cli import main

sys.exit(main())
