"""A budgetlora pooled-head classifier: an encoder, then one Linear on pooled final hidden states.

This file is shipped inside an export folder (`budgetlora export --format hf` of a run trained
with head.type=linear or head.type=mean) and loaded by transformers with
`AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True)`. It imports
only torch and transformers. No stock transformers class pools this way: a stock head adds a
dense + tanh layer (RoBERTa, MPNet) or a pooler (BERT) that this head does not have, so the
trained head cannot be rewritten onto one exactly.

`config.pooling`: "first" (the first token, <s> / [CLS]) or "mean" (the attention-mask-weighted
mean of the tokens). The config has a model type of its own, so that loading the folder without
trust_remote_code fails loudly instead of building a stock head with random weights.
"""

import inspect

from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput

from transformers import BertConfig as EncoderConfig, BertModel as EncoderModel  # budgetlora: encoder classes


class BudgetloraPooledConfig(EncoderConfig):
    model_type = "budgetlora_pooled"


class BudgetloraPooledHead(nn.Module):
    def __init__(self, hidden_size, num_labels, dropout):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.out_proj = nn.Linear(hidden_size, num_labels)

    def forward(self, pooled):
        return self.out_proj(self.dropout(pooled))


class BudgetloraPooledForSequenceClassification(PreTrainedModel):
    config_class = BudgetloraPooledConfig
    base_model_prefix = EncoderModel.base_model_prefix
    supports_gradient_checkpointing = False
    _supports_sdpa = getattr(EncoderModel, "_supports_sdpa", False)  # as the encoder allows
    _supports_flash_attn = getattr(EncoderModel, "_supports_flash_attn", False)

    def __init__(self, config):
        super().__init__(config)
        no_pooler = {"add_pooling_layer": False} if "add_pooling_layer" in inspect.signature(EncoderModel.__init__).parameters else {}
        setattr(self, self.base_model_prefix, EncoderModel(config, **no_pooler))
        dropout = config.classifier_dropout if getattr(config, "classifier_dropout", None) is not None else 0.0
        self.classifier = BudgetloraPooledHead(config.hidden_size, config.num_labels, dropout)
        self.post_init()

    def pool(self, hidden, attention_mask):
        if self.config.pooling == "first" or attention_mask is None:
            return hidden[:, 0] if self.config.pooling == "first" else hidden.mean(dim=1)
        m = attention_mask[:, : hidden.shape[1]].to(hidden.dtype).unsqueeze(-1)
        return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)

    def forward(self, input_ids=None, attention_mask=None, labels=None, return_dict=None, **kwargs):
        encoder = getattr(self, self.base_model_prefix)
        hidden = encoder(input_ids=input_ids, attention_mask=attention_mask, **kwargs)[0]
        logits = self.classifier(self.pool(hidden, attention_mask))
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)
