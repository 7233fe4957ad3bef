"""``python -m lightseg.cli`` (e.g. under torchrun)."""

import sys

from lightseg.cli import main

sys.exit(main())
