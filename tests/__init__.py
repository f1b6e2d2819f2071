"""The tests, one folder per room of the code (core, models, hosting, runners, gateway, export, service,
deploy, bench, docs), shared helpers in ``support/``, fixtures in ``conftest.py``.

``pytest -m "not server"``: the tests that start no server and no heavy subprocess."""
