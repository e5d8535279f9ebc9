"""`python -m dlm_jax ...` is the `dlm-jax` command."""

import sys

from dlm_jax.cli import main

sys.exit(main())
