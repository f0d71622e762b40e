"""`rewas-rt serve`: an HTTP service on Ray Serve (extra ``rewas-rt[serve]``).

* ``settings``  — ServeSettings: every limit and scale knob, validated, one dataclass.
* ``batching``  — grouping concurrent requests into Pipeline.generate calls (plain functions).
* ``uploads``   — streaming multipart parser: size limit, private temporary files.
* ``api``       — the FastAPI app: routes, auth, limits, metrics, errors (no Ray).
* ``app``       — the Ray Serve deployment (``@serve.batch`` around ``batching``) and builders.
* ``command``   — the ``rewas-rt serve`` subcommand (local Ray, signals).

Only ``app`` and ``command`` import Ray; ``api`` needs FastAPI. Nothing here is
imported by the runtime unless the service is used.
"""
