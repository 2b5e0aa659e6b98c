"""Data: the first stage after the config. A source becomes a table of texts and raw labels
(`sources`), labels become class ids (`labels`), rows are split (`split`), tokenised once and
cached (`tokens`) and batched (`batching`). `clean`, `augment`, `inspect` and `shift` work on the
same tables: cleaning every text a run reads, extra training rows, `budgetlora data inspect`,
`budgetlora data shift`.
"""

from .batching import Batch, collate, epoch_batches, eval_batches, train_order
from .labels import check_training_classes, encode_labels, infer_label_names
from .sources import AG_NEWS_LABELS, TableChunk, TextTable, is_local, read_table, read_table_chunks
from .split import split_train_val, train_val_indices
from .tokens import cache_dir, tokenize

__all__ = [
    "AG_NEWS_LABELS", "Batch", "TableChunk", "TextTable", "cache_dir", "check_training_classes", "collate", "encode_labels",
    "epoch_batches", "eval_batches", "infer_label_names", "is_local", "read_table", "read_table_chunks", "split_train_val",
    "tokenize", "train_order", "train_val_indices",
]
