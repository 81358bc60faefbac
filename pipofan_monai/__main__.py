"""``python -m pipofan_monai``: the command line of :mod:`pipofan_monai.apps.cli`."""
from pipofan_monai.apps.cli import *  # noqa: F401,F403  (main and the commands, for ``python -m`` and old imports)
if __name__ == "__main__": raise SystemExit(main())  # noqa: E701,F405
