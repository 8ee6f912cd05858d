"""``python -m auxrl ...`` (what ``torchrun -m auxrl train ...`` runs on every rank)."""

import sys

from auxrl.cli import main

sys.exit(main())
