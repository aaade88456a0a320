"""``python -m pyg_implicit.train <experiment> [options]``: train one of the
experiments (:mod:`pyg_implicit.experiments`) through the shared engine;
``python -m pyg_implicit.train <experiment> --help`` lists the options."""
import sys

from pyg_implicit.experiments.engine import main

if __name__ == "__main__":
    sys.exit(main())
