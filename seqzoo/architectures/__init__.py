"""Every architecture; importing this package registers them all with the transformers Auto classes.

To add one: create ``<arch>/`` with its config (a ZooConfig subclass), its mixer (``@register_mixer``) and thin
model classes, call ``register_architecture`` in its ``__init__.py``, and import it below.
"""

import importlib

from .base import get_config_class, list_architectures, make_config

# every architecture package; each registers itself on import
_ARCH_PACKAGES = ["transformer", "deltanet", "transnormer", "spark", "mega", "tcnca", "mamba2", "mamba"]

for _name in _ARCH_PACKAGES:
    importlib.import_module(f"{__name__}.{_name}")

__all__ = ["get_config_class", "list_architectures", "make_config"]
