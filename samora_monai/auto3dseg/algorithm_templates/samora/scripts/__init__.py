"""Scripts of the ``samora`` algorithm: ``algo.py`` (SamoraAlgo), ``train.py``, ``validate.py``, ``infer.py``."""
