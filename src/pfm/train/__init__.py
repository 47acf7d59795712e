"""Training: the one loop every trainer runs through (:func:`optimize`, :mod:`pfm.train.loop`) and its parts, one
module each: the rows a run visits epoch by epoch (:mod:`pfm.train.order`), the intra-op threads a step runs on and
the BLAS setting that keeps results independent of them (:mod:`pfm.train.threads`), the training state written and
read back (:mod:`pfm.train.checkpoint`), and the weights of the best held-out evaluation (:mod:`pfm.train.best_weights`).
"""

from .loop import PRECISIONS, History, LossFn, NonFiniteLossError, optimize
from .order import epoch_order, mix_seed, resolve_steps
from .threads import SMALL_STEP, intra_op_threads, step_threads

__all__ = ["History", "NonFiniteLossError", "LossFn", "optimize", "PRECISIONS", "SMALL_STEP", "step_threads",
           "intra_op_threads", "epoch_order", "mix_seed", "resolve_steps"]
