"""`python -m bot` is `headshot-bot`."""

import sys

from bot.cli import main

sys.exit(main())
