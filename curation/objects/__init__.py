"""Object storage: where a pool's images live when they are not files (S3 and S3-compatible servers).

``source`` holds the small ``ObjectSource`` protocol and its records, ``local`` a directory behind that protocol,
``s3`` the S3 implementation (obstore), ``http`` bounded downloads from allowed hosts only, ``uris`` a reader for
a manifest's mixed local/``s3://``/``https://`` lines. The scan (``curation.scoring.objects_scan``) and the
decoding workers only ever see the protocol; tests use an in-memory fake (``tests/fake_objects.py``).
"""
