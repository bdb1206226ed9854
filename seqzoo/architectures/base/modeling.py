"""The shared backbone and heads: every architecture is ZooConfig + its mixer + these classes.

    ZooModel                       embeddings -> Block x L (each the layer's mixer and FFN) -> RMSNorm
    ZooForCausalLM                 + LM head, loss with labels (shifted inside), generate() through ZooCache
    ZooForSequenceClassification   + pooling ("mean" over non-pad tokens, "last" non-pad token, or "cls") + linear head

``config.bidirectional`` runs every mixer also on the reversed sequence (``bidirectional.py``).

An architecture subclasses each with ``config_class = ItsConfig`` and nothing else (see deltanet/).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import (
    BaseModelOutputWithPast,
    CausalLMOutputWithPast,
    SequenceClassifierOutputWithPast,
)

import dataclasses

from .bidirectional import ClsToken, make_bidirectional, pool_hidden
from .block import Block
from .cache import ZooCache
from .configuration import ZooConfig
from .layers import RMSNorm, ShortConvolution

try:  # transformers 5.x: init functions that skip weights already loaded from a checkpoint
    from transformers import initialization as init
except ImportError:  # pragma: no cover
    import torch.nn.init as init

# transformers renamed the cache field of model outputs and generate() kwargs from ``past_key_values`` to
# ``cache`` (5.2x); accept both names as inputs and write outputs under the name this version uses.
CACHE_FIELD = "cache" if "cache" in {f.name for f in dataclasses.fields(CausalLMOutputWithPast)} else "past_key_values"


def _pick_cache(past_key_values, cache):
    if past_key_values is not None and cache is not None and past_key_values is not cache:
        raise ValueError("pass the cache once, as cache= or past_key_values=, not both")
    return cache if cache is not None else past_key_values


class ZooPreTrainedModel(PreTrainedModel):
    config_class = ZooConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _no_split_modules = ["Block"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_attention_backend = False

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, RMSNorm):
            init.ones_(module.weight)
        elif isinstance(module, ShortConvolution):
            init.kaiming_uniform_(module.weight, a=5**0.5)
            if module.bias is not None:
                init.zeros_(module.bias)
        if hasattr(module, "zoo_init_weights"):  # mixer-specific parameters (e.g. decay rates)
            module.zoo_init_weights(init)

    @classmethod
    def register_for_auto_class(cls, auto_class="AutoModel"):
        """No-op: seqzoo writes its own ``auto_map`` and ``seqzoo_remote.py`` shim. transformers calls this after
        a ``trust_remote_code`` load, and would then try to copy this class's source file on the next save."""

    def save_pretrained(self, save_directory, *args, **kwargs):
        """transformers' save, written into a folder beside ``save_directory`` and moved in by rename
        (``seqzoo.common.staged_directory``): a failed save leaves the old checkpoint or none, never half of one."""
        from ...common import staged_directory
        from .registry import write_remote_shim

        if args or kwargs.get("push_to_hub") or not kwargs.get("is_main_process", True):
            super().save_pretrained(save_directory, *args, **kwargs)  # other processes write nothing themselves
            write_remote_shim(save_directory)
            return
        with staged_directory(save_directory) as folder:
            super().save_pretrained(folder, **kwargs)
            write_remote_shim(folder)


def _position_ids(attention_mask, cu_seqlens, batch: int, seq_len: int, offset: int, device) -> torch.Tensor:
    if cu_seqlens is not None:  # packed: positions restart at every sequence start
        t = torch.arange(seq_len, device=device)
        starts = cu_seqlens.to(device)[:-1]
        seq_id = torch.bucketize(t, cu_seqlens.to(device)[1:], right=True)
        return (t - starts[seq_id])[None, :]
    if attention_mask is not None:  # left or right padding: count real tokens
        pos = attention_mask.long().cumsum(-1) - 1
        return pos.clamp(min=0)[:, -seq_len:]
    return (offset + torch.arange(seq_len, device=device))[None, :].expand(batch, seq_len)


class ZooModel(ZooPreTrainedModel):
    def __init__(self, config: ZooConfig):
        super().__init__(config)
        self.embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=None)
        self.layers = nn.ModuleList(Block(config, i) for i in range(config.num_hidden_layers))
        if getattr(config, "bidirectional", False):  # every mixer also run on the reversed sequence
            make_bidirectional(self.layers, config)
        self.norm = RMSNorm(config.hidden_size, eps=config.norm_eps)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self):
        return self.embeddings

    def set_input_embeddings(self, value):
        self.embeddings = value

    def state_size(self) -> int:
        """Recurrent-state numbers per sequence summed over layers (0 for attention, which grows with T)."""
        return sum(block.state_size(self.config) for block in self.layers)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: ZooCache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        cu_seqlens: torch.LongTensor | None = None,
        cache: ZooCache | None = None,
        **kwargs,
    ):
        past_key_values = _pick_cache(past_key_values, cache)
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids [B, T] or inputs_embeds [B, T, hidden]")
        if input_ids is not None and input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [B, T], got shape {list(input_ids.shape)}")
        hidden_states = self.embeddings(input_ids) if inputs_embeds is None else inputs_embeds  # [B, T, hidden]
        B, T = hidden_states.shape[:2]
        if T == 0:
            raise ValueError("input_ids has no tokens (T = 0); pass at least one token")
        if cu_seqlens is not None and B != 1:
            raise ValueError(f"cu_seqlens packs sequences along T and needs batch size 1, got {B}")
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if self.training and self.gradient_checkpointing:
            use_cache = False
        if past_key_values is not None and not isinstance(past_key_values, ZooCache):
            raise TypeError(
                f"past_key_values must be a seqzoo ZooCache (as returned by this model), got {type(past_key_values).__name__}"
            )
        cache = past_key_values
        if use_cache and cache is None:
            cache = ZooCache(self.config.num_hidden_layers)
        offset = cache.seen_tokens if cache is not None else 0
        if attention_mask is not None:
            if attention_mask.dim() != 2 or attention_mask.shape[0] != B or attention_mask.shape[1] not in (T, offset + T):
                raise ValueError(
                    f"attention_mask must be [B, T] or [B, cached + T] = [{B}, {T}] or [{B}, {offset + T}], "
                    f"got {list(attention_mask.shape)}"
                )
            if attention_mask.shape[1] == T and offset > 0:  # only the new tokens' mask was given
                attention_mask = torch.cat([attention_mask.new_ones(B, offset), attention_mask], dim=1)
            if bool(attention_mask.all()):
                attention_mask = None  # no padding: let mixers take their unmasked fast paths
        if position_ids is None:
            position_ids = _position_ids(attention_mask, cu_seqlens, B, T, offset, hidden_states.device)

        all_hidden = [] if output_hidden_states else None
        for layer in self.layers:
            if all_hidden is not None:
                all_hidden.append(hidden_states)
            hidden_states = layer(
                hidden_states,
                attention_mask=attention_mask,
                cache=cache,
                cu_seqlens=cu_seqlens,
                position_ids=position_ids,
            )
        hidden_states = self.norm(hidden_states)
        if all_hidden is not None:
            all_hidden.append(hidden_states)
        if cache is not None:
            cache.seen_tokens += T
        return BaseModelOutputWithPast(
            last_hidden_state=hidden_states,
            hidden_states=tuple(all_hidden) if all_hidden is not None else None,
            **{CACHE_FIELD: cache if use_cache else None},
        )


class ZooForCausalLM(ZooPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.embeddings.weight"}

    def __init__(self, config: ZooConfig):
        super().__init__(config)
        self.model = (type(self).base_model_class or ZooModel)(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    base_model_class: type | None = None  # set by architectures to their ZooModel subclass

    def get_input_embeddings(self):
        return self.model.embeddings

    def set_input_embeddings(self, value):
        self.model.embeddings = value

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # generate() must not build a DynamicCache: the model returns its own ZooCache

    def prepare_inputs_for_generation(self, input_ids, past_key_values=None, attention_mask=None,
                                      inputs_embeds=None, use_cache=True, cache=None, **kwargs):
        past_key_values = _pick_cache(past_key_values, cache)
        model_inputs = {CACHE_FIELD: past_key_values, "attention_mask": attention_mask, "use_cache": use_cache}
        seen = past_key_values.seen_tokens if isinstance(past_key_values, ZooCache) else 0
        if inputs_embeds is not None and seen == 0:
            model_inputs["inputs_embeds"] = inputs_embeds
        else:
            model_inputs["input_ids"] = input_ids[:, seen:]  # only the tokens the cache has not seen
        if "logits_to_keep" in kwargs:
            model_inputs["logits_to_keep"] = kwargs["logits_to_keep"]
        return model_inputs

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: ZooCache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        cu_seqlens: torch.LongTensor | None = None,
        logits_to_keep: int = 0,
        cache: ZooCache | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=_pick_cache(past_key_values, cache),
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_hidden_states=output_hidden_states,
            cu_seqlens=cu_seqlens,
        )
        hidden = out.last_hidden_state  # [B, T, hidden]
        if logits_to_keep and labels is None:
            hidden = hidden[:, -logits_to_keep:]
        logits = self.lm_head(hidden)  # [B, T, V]
        loss = None
        if labels is not None:
            if labels.shape != logits.shape[:2]:
                raise ValueError(f"labels must be [B, T] = {list(logits.shape[:2])}, got {list(labels.shape)}")
            # position t predicts token t + 1; -100 is ignored
            loss = F.cross_entropy(
                logits[:, :-1].float().reshape(-1, logits.shape[-1]),
                labels[:, 1:].reshape(-1).to(logits.device),
                ignore_index=-100,
            )
        return CausalLMOutputWithPast(
            loss=loss, logits=logits, hidden_states=out.hidden_states, **{CACHE_FIELD: getattr(out, CACHE_FIELD)}
        )


class ZooForSequenceClassification(ZooPreTrainedModel):
    base_model_class: type | None = None

    def __init__(self, config: ZooConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.model = (type(self).base_model_class or ZooModel)(config)
        self.dropout = nn.Dropout(config.classifier_dropout)
        self.score = nn.Linear(config.hidden_size, config.num_labels, bias=True)
        self.cls_token = ClsToken(config.hidden_size) if config.classifier_pooling == "cls" else None
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embeddings

    def set_input_embeddings(self, value):
        self.model.embeddings = value

    def pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """[B, T, hidden] -> [B, hidden]: mean over non-pad tokens, the last non-pad token, or the CLS position."""
        return pool_hidden(hidden, attention_mask, self.config.classifier_pooling)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> SequenceClassifierOutputWithPast:
        if self.cls_token is not None:  # a learned vector in front of every sequence (bidirectional.py)
            embeds = self.model.embeddings(input_ids) if inputs_embeds is None else inputs_embeds
            inputs_embeds, attention_mask = self.cls_token.prepend(embeds, attention_mask)
            input_ids = None
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            inputs_embeds=inputs_embeds,
            use_cache=False,
            output_hidden_states=output_hidden_states,
        )
        pooled = self.pool(out.last_hidden_state, attention_mask)  # [B, hidden]
        logits = self.score(self.dropout(pooled))  # [B, num_labels]
        loss = None
        if labels is not None:
            if self.num_labels == 1:
                loss = F.mse_loss(logits.squeeze(-1).float(), labels.float())
            else:
                loss = F.cross_entropy(logits.float(), labels.view(-1))
        return SequenceClassifierOutputWithPast(loss=loss, logits=logits, hidden_states=out.hidden_states)
