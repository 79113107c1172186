"""The one web front: IBM's Qiskit Runtime REST API, the Jobs page and ``/metrics``.

``session-broker api`` (and ``web``, and ``up``) serve ``app.create_app()`` with uvicorn.
The stock ``qiskit_ibm_runtime`` client talks to the routes in ``runtime.py`` and ``jobs.py`` (after a
token from ``identity.py``); operators use the pages in ``session_broker.ops.web``. Modules:

``settings``  SESSION_BROKER_API_* (keys, instance CRN, token secret, resource limits)
``limits``    body size and time, header deadline, tag limits
``auth``      key check, JWT tokens, the Bearer + Service-CRN check of every runtime route
``reader``    the strict reader of the client's job params (no RuntimeDecoder)
``devices``   backend list, configuration, properties and status in IBM's shapes
``runtime``   the token + CRN check; backend, usage and session routes, thin over Session
``jobs``      the job routes, thin over SamplerV2 / EstimatorV2 / the Store
``identity``  POST /identity/token, Global Search and Catalog
``app``       assembly: error shapes, limits, TLS, the recipe printed at start
"""
