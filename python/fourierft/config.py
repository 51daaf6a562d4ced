"""``FourierFTConfig``: PEFT's FourierFT configuration, validated by the C++ core.

Same fields, defaults, JSON file and errors as ``peft.FourierFTConfig``; validation and the
``adapter_config.json`` text come from the C++ ``fourierft::FourierFTConfig`` through the bindings,
so a config accepted here is accepted by the C++ API and the other way round.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from . import _C

CONFIG_NAME = "adapter_config.json"

# Fields of peft.PeftConfig that FourierFTConfig inherits, then FourierFT's own (in PEFT's order).
_PEFT_BASE_FIELDS = ("task_type", "peft_type", "auto_mapping", "base_model_name_or_path", "revision", "inference_mode")


@dataclass
class FourierFTConfig:
    """Configuration of a FourierFT adapter (PEFT's ``FourierFTConfig``, field for field).

    Args:
        n_frequency: learnable spectral coefficients per adapted layer (``0 < n <= d1 * d2``). The
            paper uses 1000 for RoBERTa/GLUE (about LoRA r=8 quality with ~16x fewer parameters).
        scaling: alpha in ``delta_W = Re(ifft2(F)) * alpha`` (paper: 100-150 for RoBERTa, 300 for
            LLaMA and ViT).
        random_loc_seed: seed of the entry matrix (regenerated on load, never stored).
        fan_in_fan_out: the targets store weights as (fan_in, fan_out) like GPT-2's ``Conv1D``
            (forced on/off per layer type with a warning, as PEFT does).
        target_modules: names (exact or ``.name`` suffix), one regex (full match) or
            ``"all-linear"``; ``None`` picks PEFT's default for the model type.
        exclude_modules: names or one regex never adapted.
        bias: ``"none"``, ``"all"`` or ``"fourier_only"``: which biases are trained and saved.
        modules_to_save: modules (e.g. a classifier head) trained in full and saved with the adapter.
        layers_to_transform, layers_pattern: restrict to layer indices (list ``target_modules`` only).
        n_frequency_pattern: ``{name regex: n_frequency}``; the first key matching ``.*\\.key$`` wins.
        init_weights: ``False`` draws the spectrum from ``randn`` (PEFT's default), ``True`` zeros.
    """

    task_type: Optional[str] = None
    peft_type: str = "FOURIERFT"
    auto_mapping: Optional[dict] = None
    base_model_name_or_path: Optional[str] = None
    revision: Optional[str] = None
    inference_mode: bool = False
    n_frequency: int = 1000
    scaling: float = 150.0
    random_loc_seed: Optional[int] = 777
    fan_in_fan_out: bool = False
    target_modules: Optional[Union[list[str], set[str], str]] = None
    exclude_modules: Optional[Union[list[str], set[str], str]] = None
    bias: str = "none"
    modules_to_save: Optional[list[str]] = None
    layers_to_transform: Optional[Union[list[int], int]] = None
    layers_pattern: Optional[Union[list[str], str]] = None
    n_frequency_pattern: Optional[dict] = field(default_factory=dict)
    init_weights: bool = False

    def __post_init__(self):
        # PEFT stores the peft_type as an enum whose value is "FOURIERFT".
        peft_type = getattr(self.peft_type, "value", self.peft_type)
        if peft_type != "FOURIERFT":
            raise ValueError(f"FourierFTConfig: peft_type must be 'FOURIERFT', got {peft_type!r}")
        self.peft_type = "FOURIERFT"
        self.task_type = getattr(self.task_type, "value", self.task_type)
        # As PEFT: lists of names become sets.
        if isinstance(self.target_modules, list):
            self.target_modules = set(self.target_modules)
        if isinstance(self.exclude_modules, list):
            self.exclude_modules = set(self.exclude_modules)
        if self.n_frequency_pattern is None:
            self.n_frequency_pattern = {}
        self.validate()

    # ------------------------------------------------------------------------------------------
    def _json_dict(self) -> dict:
        """The dict the C++ core reads: sets as sorted lists, the PEFT type."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, set):
                value = sorted(value)
            out[f.name] = copy.deepcopy(value)
        return out

    def _core(self) -> "_C.CoreConfig":
        """The validated C++ config (target matching runs on it)."""
        return _C.CoreConfig.from_json(json.dumps(self._json_dict()), "FourierFTConfig")

    def validate(self) -> None:
        """Raises ``ValueError`` (naming the field and the value) for anything PEFT would reject or
        that cannot work: n_frequency <= 0, an unknown bias, an invalid regex, layers_pattern
        without layers_to_transform, layers_* with a regex target_modules, ..."""
        if isinstance(self.target_modules, str) and self.layers_to_transform is not None:
            raise ValueError("`layers_to_transform` cannot be used when `target_modules` is a str.")
        if isinstance(self.target_modules, str) and self.layers_pattern is not None:
            raise ValueError("`layers_pattern` cannot be used when `target_modules` is a str.")
        if self.layers_pattern and self.layers_to_transform is None:
            raise ValueError("When `layers_pattern` is specified, `layers_to_transform` must also be specified. ")
        values = self._json_dict()
        if values["target_modules"] is None:
            # As in PEFT, None is allowed until the model type picks the defaults (get_peft_model);
            # everything else is checked now.
            values["target_modules"] = ["<chosen by model type>"]
        _C.CoreConfig.from_json(json.dumps(values), "FourierFTConfig")

    def to_dict(self) -> dict[str, Any]:
        """All fields, as ``peft.FourierFTConfig.to_dict()`` (sets stay sets)."""
        return {f.name: copy.deepcopy(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def to_json_string(self) -> str:
        """The ``adapter_config.json`` text PEFT writes for this config (sorted keys, indent 2)."""
        return self._core().to_json()

    def save_pretrained(self, save_directory: Union[str, os.PathLike], **kwargs) -> None:
        """Writes ``<save_directory>/adapter_config.json`` atomically (PEFT's file)."""
        if os.path.isfile(save_directory):
            raise AssertionError(f"Provided path ({save_directory}) should be a directory, not a file")
        os.makedirs(save_directory, exist_ok=True)
        _C.write_file_atomically(os.path.join(os.fspath(save_directory), CONFIG_NAME), self.to_json_string())

    @classmethod
    def from_json_string(cls, text: str, source: str = "<string>") -> "FourierFTConfig":
        """Parses an ``adapter_config.json`` text written by PEFT or by us (unknown keys are ignored
        with a warning, a wrong ``peft_type`` or field type is a ``ValueError`` naming the key)."""
        canonical = json.loads(_C.CoreConfig.from_json(text, source).to_json())
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in canonical.items() if k in known})

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Union[str, os.PathLike], subfolder: Optional[str] = None,
                        **kwargs) -> "FourierFTConfig":
        """Reads ``adapter_config.json`` from a local directory (nothing is downloaded); keyword
        arguments override fields."""
        path = os.fspath(pretrained_model_name_or_path)
        if subfolder:
            path = os.path.join(path, subfolder)
        file = os.path.join(path, CONFIG_NAME) if os.path.isdir(path) else path
        if not os.path.isfile(file):
            raise ValueError(f"Can't find '{CONFIG_NAME}' at '{path}' (fourierft only reads local directories)")
        with open(file, encoding="utf-8") as handle:
            config = cls.from_json_string(handle.read(), file)
        return dataclasses.replace(config, **kwargs) if kwargs else config

    # ---- PEFT interoperability -----------------------------------------------------------------
    @classmethod
    def from_peft_config(cls, peft_config) -> "FourierFTConfig":
        """The same config from a ``peft.FourierFTConfig``."""
        type_name = getattr(getattr(peft_config, "peft_type", None), "value", getattr(peft_config, "peft_type", None))
        if type_name != "FOURIERFT":
            raise ValueError(f"from_peft_config expects a peft.FourierFTConfig, got peft_type={type_name!r}")
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: copy.deepcopy(v) for k, v in peft_config.to_dict().items() if k in known}
        return cls(**values)

    def to_peft_config(self):
        """The same config as a ``peft.FourierFTConfig`` (needs ``peft``)."""
        import peft

        values = self.to_dict()
        values.pop("peft_type")
        return peft.FourierFTConfig(**values)

    @property
    def is_prompt_learning(self) -> bool:
        return False
