"""QM9 molecular property prediction (:mod:`.data`, :mod:`.model`, :mod:`.train`)."""
