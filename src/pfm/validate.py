"""Argument checks that raise a :class:`pfm.PFMError` subclass naming the argument and what was expected.

The public, stable home of the checks pfm's own functions use, for code written on pfm (the experiments in
``pfm-experiments`` use them), so that its errors read like pfm's: :class:`pfm.InvalidInputError` for a wrong value,
shape or length (NaN/inf, empty), :class:`pfm.InvalidTypeError` for a wrong type. They keep their signatures within
a major version; the implementations live in a private module, import them from here.

- conversions: :func:`as_tensor` (any array-like to a tensor, or an error naming ``name``), :func:`as_float`
  (the same, floating point), :func:`shape_of` (a tensor's shape as text, for messages)
- tensors: :func:`check_finite`, :func:`check_nonempty`, :func:`check_min_dim`, :func:`check_trailing_shape`
- numbers and choices: :func:`check_positive_int`, :func:`check_int`, :func:`check_positive_float`,
  :func:`check_nonneg_float`, :func:`check_beta` (a KL weight: a number > 0, returned as a float),
  :func:`check_choice`, :func:`check_shape` (a shape tuple), :func:`check_device` (returns the ``torch.device``)
"""

from ._validate import (as_float, as_tensor, check_beta, check_choice, check_device, check_finite, check_int,
                        check_min_dim, check_nonempty, check_nonneg_float, check_positive_float, check_positive_int,
                        check_shape, check_trailing_shape, shape_of)

__all__ = ["as_tensor", "as_float", "shape_of", "check_finite", "check_nonempty", "check_min_dim",
           "check_trailing_shape", "check_positive_int", "check_int", "check_positive_float", "check_nonneg_float",
           "check_beta", "check_choice", "check_shape", "check_device"]
