"""Air-gapped delivery (docs/airgap.md): lock files (``lock.py``), inventories of what a target holds
(``inventory.py``), delta bundles written from a lock (``bundle.py``) and imported at the site
(``import_bundle.py``)."""
