"""Templates: the :class:`Template` volume, loading from maps or atomic models, atoms, selections and the model-to-potential code.

Modules, each importing only those listed before it: ``template`` (the class, map files),
``atoms`` (reading PDB/mmCIF), ``selection`` (atom selections), ``model`` (potential on a
grid, dose filter, caches), ``load`` (``load_template``: dispatch by file suffix).
"""
