"""Atomic model refinement against particle images (GisAPR-like): rigid groups, their
predicted images and gradient, the refinement cycles, and the refined model's file.

``groups`` (what moves), ``forward`` (images from atoms and the gradient), ``particles``
(whitened patches around the hits), ``refine`` (cycles of model and pose steps, work and
free halves), ``writer`` (the refined PDB / mmCIF). The job is
:mod:`napari_2dtm.jobs.model_refine`.
"""
