"""In situ classification of 2DTM hits with several templates (Lucas et al., eLife 2022).

Every detected target is scored with each state's template at its pose, with the same
small local search, so the SNRs share one scale; the log-ratios of the SNRs separate
the states; a Gaussian mixture fitted by EM gives each hit the posterior probability of
each state, and hits are assigned at a chosen confidence (``docs/classification.md``).

Modules, each importing only those listed before it:

- ``templates``: :class:`~napari_2dtm.classify.templates.TemplateSet` (one template per
  state, sharing one origin), ``load_template_set``, alignment checks;
- ``scoring``: ``score_hits`` (every hit with every template, one local grid);
- ``mixture``: the features ``log2(SNR_ref / SNR_k)``, the EM fit, posteriors, assignment;
- ``result``: ``ClassificationResult``, ``classify_scores`` (model selection),
  ``classify``;
- ``folder``: the classification folder (write, read, per-class STAR files).

The job that scores, fits and writes the folder for the CLI and the widget is
:func:`napari_2dtm.jobs.classify.run_classify`; the figure is
:func:`napari_2dtm.plots.draw_features`.
"""
