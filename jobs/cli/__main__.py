"""`python -m p13n.cli`."""

import sys

from p13n.cli import main

sys.exit(main())
