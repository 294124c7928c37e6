"""Everything that talks to Label Studio — the only package that imports the Label Studio SDK.

- ``client``: the HTTP client behind the ``LabelStudioAPI`` Protocol (typed errors, redaction, the unretried import);
- ``formats``: labeling configs, task and prediction payloads, image URLs, times, annotations normalised;
- ``tags``: the ranking-tag codec (``curate-<model version>-<UTC time>``);
- ``tasks``: finding a project's tasks (by curation_id, all of them, updated since);
- ``project``: connect, find or create the project, its storage;
- ``reconcile``: before any import, the project's duplicates removed, its curate tasks adopted, imports of unknown
  outcome held until they settle;
- ``publish``: the one sequence that makes the label stream serve a ranking;
- ``push``, ``rank`` + ``reprioritize``, ``pull``: the three flows, each starting from its module.
"""
