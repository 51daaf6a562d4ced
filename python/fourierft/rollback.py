"""All or nothing: what an entry point that changes a model (``get_peft_model``, ``inject_adapter``,
``from_pretrained``, ``load_adapter``) may change, captured before it runs and put back once if it raises.

PEFT's entry points fail part-way (a later layer too small for ``n_frequency``, a checkpoint that does not fit) and
leave what they had done: replaced modules, new entries in the tuner layers' per-adapter dicts, a new
``peft_config`` entry, changed ``requires_grad`` and active adapters. :func:`all_or_nothing` restores all of it.
"""
from __future__ import annotations

import contextlib
import copy
from typing import Iterator

from torch import nn

__all__ = ["all_or_nothing"]

_MISSING = object()


class _State:
    """What PEFT's entry points may change in ``model``: the module tree (targets replaced by tuner layers, heads by
    wrappers), every tuner layer's and wrapper's per-adapter entries (spectra, n_frequency, scaling, seeds, indices,
    modules_to_save copies) and active adapter, ``requires_grad``, train/eval, and the ``peft_config`` dict (its
    contents: the tuner and the PeftModel share it) and the tuner's targeted names."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.modules = list(model.modules())
        self.children = {id(m): dict(m._modules) for m in self.modules}
        self.requires_grad = [(p, p.requires_grad) for p in model.parameters()]
        self.training = [(m, m.training) for m in self.modules]
        self.peft_config = model.__dict__.get("peft_config", _MISSING)
        self.configs = []  # (dict, its items) for every peft_config dict in the model
        self.entries = []  # (module, holder, keys before) for per-adapter dicts; (module, None, active) for actives
        self.targeted = []  # (container, its items): the tuners' targeted names, the wrappers' adapter sets
        for module in self.modules:
            configs = module.__dict__.get("peft_config")
            if isinstance(configs, dict):
                self.configs.append((configs, dict(configs)))
            adapters = module.__dict__.get("_adapters")  # an auxiliary wrapper's adapter names
            if isinstance(adapters, set):
                self.targeted.append((adapters, set(adapters)))
            for attr in ("targeted_module_names", "targeted_parameter_names"):
                names = module.__dict__.get(attr)
                if isinstance(names, list):
                    self.targeted.append((names, list(names)))
            names = set(getattr(module, "adapter_layer_names", ())) | set(getattr(module, "other_param_names", ()))
            if not names:
                continue
            names.add("indices")
            for name in names:
                holder = getattr(module, name, None)
                if holder is not None and hasattr(holder, "keys"):
                    self.entries.append((module, holder, set(holder.keys())))
            self.entries.append((module, None, copy.copy(getattr(module, "_active_adapter", None))))
        self.tuner_active = [(m, copy.copy(m.__dict__["active_adapter"])) for m in self.modules
                             if "active_adapter" in m.__dict__]

    def restore(self) -> None:
        for module, holder, before in self.entries:
            if holder is None:
                if before is not None:
                    module._active_adapter = copy.copy(before)
                continue
            for key in [k for k in holder.keys() if k not in before]:
                del holder[key]
        for configs, items in self.configs:
            configs.clear()
            configs.update(items)
        for names, items in self.targeted:
            names.clear()
            names.update(items) if isinstance(names, set) else names.extend(items)
        for module, active in self.tuner_active:
            module.__dict__["active_adapter"] = active
        for module in self.modules:
            module._modules.clear()
            module._modules.update(self.children[id(module)])
        for p, flag in self.requires_grad:
            p.requires_grad_(flag)
        for m, flag in self.training:
            m.training = flag
        if self.peft_config is _MISSING:
            self.model.__dict__.pop("peft_config", None)
        else:
            self.model.__dict__["peft_config"] = self.peft_config


@contextlib.contextmanager
def all_or_nothing(model: nn.Module) -> Iterator[None]:
    """``with all_or_nothing(model): ...``: if the block raises, ``model`` is put back as it was before it (see
    :class:`_State`), then the exception propagates."""
    state = _State(model)
    try:
        yield
    except BaseException:
        state.restore()
        raise
