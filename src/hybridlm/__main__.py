"""`python -m hybridlm ...` (and so `torchrun -m hybridlm train ...`): the same command as `hybridlm`."""

import sys

from hybridlm.cli import main

sys.exit(main())
