"""Experiments: data, model and training of each published benchmark, apart from the
core library (nothing in :mod:`pyg_implicit` outside this package imports it).

Each experiment is a package ``pyg_implicit.experiments.<name>`` whose ``train``
module declares its options and builds its Lightning module and data; they all train
through :mod:`pyg_implicit.experiments.engine`:
``python -m pyg_implicit.train <name> [options]``.
"""

# name -> the module with NAME, add_options(parser) and build(args)
EXPERIMENTS = {"nbody": "pyg_implicit.experiments.nbody.train",
               "modelnet": "pyg_implicit.experiments.modelnet.train",
               "qm9": "pyg_implicit.experiments.qm9.train"}
