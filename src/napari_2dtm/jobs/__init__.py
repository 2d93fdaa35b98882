"""Qt-free jobs: one orchestrator per workflow, behind every door (CLI, batch, demo, widgets).

The protocol every job follows (search, batch, classify, reconstruct, teaching, and every
job added later)::

    result, folder = run_xxx(inputs..., out_dir, *, overwrite=False,
                             progress: Callable[[P], None] | None = None,
                             cancel: threading.Event | None = None)

- ``progress`` is called from the job's own thread with a small progress record (its
  type is the job's own, e.g. :class:`~napari_2dtm.search.engine.SearchProgress`); a
  widget forwards it to the main thread, the CLI prints a bar.
- ``cancel`` is a :class:`threading.Event`; when it is set the job stops at its next
  check and raises :class:`~napari_2dtm.errors.Cancelled`, leaving nothing that looks
  complete.
- Bad input raises :class:`~napari_2dtm.errors.InputError` (one line); any other failure
  :class:`~napari_2dtm.errors.JobFailed` or the original exception.
- It returns its result and the folder it wrote. One door or another, the same folder
  comes out.
"""
