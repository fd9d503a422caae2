"""Which CPU kernels a bfloat16 matrix product of few rows runs on.

PyTorch hands bfloat16 products on the CPU to oneDNN, which is fast for many rows and slow for one: measured on
the 2-core AMD EPYC (AVX-512 BF16), 2026-11-27, PyTorch 2.13:

| product | oneDNN | PyTorch's own kernel |
|---|---|---|
| one decode step through SmolLM2-135M's 30 blocks, 1 row | 34.3 ms | 20.4 ms |
| the same, 2 rows | 31.4 ms | 23.9 ms |
| the same, 4 rows | 35.9 ms | 42.2 ms |
| the same, 16 rows | 55.7 ms | 139 ms |
| LM head, 49,152 x 576, 1 row | 3.24 ms | 1.74 ms |
| LM head, 16 rows | 5.59 ms | 24.6 ms |

:func:`matmul_kernels` picks PyTorch's own kernels for a bfloat16 product of at most :data:`NATIVE_BF16_ROWS`
rows (a lone stream's decode step on a server we start) and leaves oneDNN for the rest. Both accumulate in
float32 and round to bfloat16; only the order of the sums may differ, so in bfloat16 a lone stream's values can
differ in the last bit from Petals' own step. The switch is process-wide (``torch.backends.mkldnn.enabled``), so
it is used only where products run one at a time: a Petals server's runtime thread. (The client's LM head would
gain 1.5 ms per token too, but its calls are coalesced across sessions, so its kernel would then depend on how
many sessions happened to share a call, and bfloat16 answers on how busy the server is.)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

NATIVE_BF16_ROWS = 2


@contextlib.contextmanager
def matmul_kernels(rows: int, dtype) -> Iterator[None]:
    """Run the products inside on PyTorch's own kernels when they are bfloat16 with few ``rows``."""
    import torch

    if dtype != torch.bfloat16 or rows > NATIVE_BF16_ROWS or not torch.backends.mkldnn.enabled:
        yield
        return
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = True
