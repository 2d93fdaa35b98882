"""Templates: the :class:`Template` volume, loading from maps or atomic models, atoms, selections and the model-to-potential code."""
