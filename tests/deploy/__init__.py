"""``deploy/``, ``images.py``, ``bentofile.yaml`` and the CI workflows."""
