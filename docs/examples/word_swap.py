"""An erasure method in one file, loaded with ``erasebench --plugin docs/examples/word_swap.py``.

``word-swap`` rewrites the text encoder's token-embedding row of each target word with the row of an anchor
word, so every prompt that names the target is encoded as if it named the anchor ("a red circle" reads as
"a red square"). A closed-form edit of a few rows of one matrix; it knows nothing of synonyms or indirect
phrasings, so the robustness tasks show what it misses. (Not a published method: an example of the protocol.)
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from bench.backbone import Backbone
from methods.base import ErasureRequest, Method, MethodConfig, register_method
from methods.uce import record_edit


@dataclass
class WordSwapConfig(MethodConfig):
    anchor: str = "square"  # the word whose embedding replaces the target's (--method-args word-swap:anchor=heart)
    strength: float = 1.0  # 1: the anchor's row; 0: unchanged; in between: the straight line between the two


@register_method
class WordSwap(Method):
    name = "word-swap"
    family = "closed-form"
    description = "example plugin: the target word's token embedding set to an anchor word's"
    config_class = WordSwapConfig
    edited_components = ("text_encoder",)  # what apply() changes, and what a saved edit holds

    def _token(self, backbone: Backbone, word: str) -> int:
        ids = backbone.tokenizer(word, add_special_tokens=False).input_ids
        if len(ids) != 1:
            raise ValueError(f"word-swap: {word!r} is {len(ids)} tokens; give a word of one token")
        return ids[0]

    def apply(self, backbone: Backbone, request: ErasureRequest) -> Backbone:
        start = time.perf_counter()
        edited = backbone.copy()  # never modify the backbone you are given
        table = edited.text_encoder.get_input_embeddings().weight
        anchor = self._token(edited, self.config.anchor)  # its own setting: a request's anchor may be a phrase
        with torch.no_grad():
            for target in request.targets:
                row = self._token(edited, target)
                table[row] += self.config.strength * (table[anchor] - table[row])
        record_edit(self, edited, request, time.perf_counter() - start)  # provenance + the edit-time figure
        return edited
