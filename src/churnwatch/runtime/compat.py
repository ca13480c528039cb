"""Shims for the exact library versions churnwatch runs on; each says what it mends and when it can go."""

from __future__ import annotations

import logging

from torch.utils import _pytree

LITLOGGER_TIP = "💡 Tip: For seamless cloud logging"


def lightning_leaf_spec() -> None:
    """Lightning 2.6 builds `torch.utils._pytree.LeafSpec()` for every dataloader it wraps, which torch
    2.13 deprecates with a FutureWarning on every fit, validate and test (Lightning-AI/pytorch-lightning
    #21326). torch's replacement, `treespec_leaf()`, returns the same shared leaf spec without the warning:
    point Lightning's module at it. A no-op where either side has moved on; remove once Lightning calls
    `treespec_leaf` itself."""
    from lightning.pytorch.utilities import _pytree as lightning_pytree

    if hasattr(_pytree, "treespec_leaf") and getattr(lightning_pytree, "LeafSpec", None) is _pytree.LeafSpec:
        lightning_pytree.LeafSpec = _pytree.treespec_leaf


class _NoLitLoggerTip(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(LITLOGGER_TIP)


def quiet_litlogger_tip() -> None:
    """Lightning 2.6 logs an advertisement for its hosted logger (LitLogger) at the start of every fit,
    validate and test unless that logger is in use: drop that one message, nothing else Lightning says."""
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _NoLitLoggerTip) for f in logger.filters):
        logger.addFilter(_NoLitLoggerTip())
