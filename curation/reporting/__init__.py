"""Rendering ``curate report``: ``data`` (the plain records a report is made of), ``figures`` (matplotlib, Agg,
imported only when a figure is drawn) and ``html`` (one self-contained page: every image embedded as a data URI,
every string escaped). Nothing here reads the database: ``curation.jobs.report`` gathers the data."""
