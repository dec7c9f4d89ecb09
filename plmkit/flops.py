"""Count the floating-point operations of one forward pass with ``torch.utils.flop_counter``.

A multiply-add counts as 2 FLOPs (the counter's convention): a linear map of ``n`` rows from ``i`` to
``o`` features costs ``2 n i o``. The counter ships formulas for matrix products and the GPU attention
kernels; the CPU attention kernel (``_scaled_dot_product_flash_attention_for_cpu``) has none, so it is
added here with the same formula: for queries (b, h, s_q, d) and keys/values (b, h, s_k, d_v),

    FLOPs = 2 b h s_q s_k d   (Q K^T)   +   2 b h s_q s_k d_v   (softmax(.) V)

Softmax, norms and element-wise work are not counted (as in the counter itself).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def _cpu_attention_flops(query_shape, key_shape, value_shape, *_: Any, out_shape: Any = None, **__: Any) -> int:
    batch, heads, queries, head_dim = query_shape
    keys, value_dim = key_shape[-2], value_shape[-1]
    return 2 * batch * heads * queries * keys * (head_dim + value_dim)


def _extra_formulas() -> dict[Any, Any]:
    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    return {op: _cpu_attention_flops} if op is not None else {}


@torch.no_grad()
def count_flops(module: nn.Module, *args: Any, **kwargs: Any) -> int:
    """FLOPs of one eval-mode forward ``module(*args, **kwargs)`` (no gradient); training mode is restored.

    The parameters are counted with ``requires_grad`` off (restored after): the counter's module hooks
    reject a tensor that requires grad but has no ``grad_fn``, which is what a view of a parameter taken
    under ``no_grad`` is (e.g. one row of a per-step parameter table).
    """
    from torch.utils.flop_counter import FlopCounterMode

    was_training = module.training
    trainable = [p for p in module.parameters() if p.requires_grad]
    module.eval()
    try:
        for param in trainable:
            param.requires_grad_(False)
        with FlopCounterMode(display=False, custom_mapping=_extra_formulas()) as counter:
            module(*args, **kwargs)
    finally:
        for param in trainable:
            param.requires_grad_(True)
        module.train(was_training)
    return int(counter.get_total_flops())
