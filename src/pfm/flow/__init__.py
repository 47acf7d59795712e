"""The flow: :class:`PreferenceFlow` (:mod:`pfm.flow.model`: the field, the standardization of outputs and float
contexts, transform, iterate, log_prob), its fitting by conditional flow matching (:mod:`pfm.flow.fit`), the
statistics it standardizes with (:mod:`pfm.flow.normalization`) and its files, ``config.json`` and
``weights.safetensors``, written and read back with every setting checked (:mod:`pfm.flow.files`).
"""

from .files import CONFIG_NAME, FORMAT, FORMAT_VERSION, WEIGHTS_NAME
from .model import PreferenceFlow

__all__ = ["PreferenceFlow", "CONFIG_NAME", "WEIGHTS_NAME", "FORMAT", "FORMAT_VERSION"]
