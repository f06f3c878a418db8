"""The data pipeline: text sources -> tokenizer -> cached token shards -> training/validation batches.

Typical use by a trainer::

    data = prepare_data(cfg.data)                       # tokenises once, then reads the cache
    sampler = TrainSampler(data.train_tokens, batch_size, cfg.data.seq_len, cfg.data.seed,
                           on_exhausted=cfg.data.on_exhausted, rank=rank, world_size=world_size)
    val = validation_batches(data.val_tokens, batch_size, cfg.data.seq_len, num_batches=20)
    batch = to_device(sampler.next_batch(), device)     # [batch_size, seq_len + 1] int64
    # packing="documents" (with eos_id=data.tokenizer.eos_id): a DocumentBatch, flattened with cu_seqlens

Nothing here imports model code.
"""

from .packing import DocumentBatch, pack_documents
from .sampler import TrainSampler, to_device, validation_batches
from .shards import PreparedData, prepare_data, token_dtype
from .sources import EMBEDDED_SOURCES, iter_documents
from .tokenizer import Tokenizer, get_tokenizer, load_tokenizer

__all__ = [
    "DocumentBatch",
    "EMBEDDED_SOURCES",
    "PreparedData",
    "Tokenizer",
    "TrainSampler",
    "get_tokenizer",
    "iter_documents",
    "load_tokenizer",
    "pack_documents",
    "prepare_data",
    "to_device",
    "token_dtype",
    "validation_batches",
]
