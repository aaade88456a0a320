"""The charged N-body experiment: simulator and data files (:mod:`.data`), the model
(:mod:`.model`) and its training module (:mod:`.train`)."""
