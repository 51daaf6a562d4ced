"""PEFT's FourierFTConfig checked before anything is built from it, and PEFT's rule for a module's n_frequency.

Python checks PEFT's own config class (the C++ API has its own ``fourierft::FourierFTConfig``, held to PEFT by the
generated tables in tests/data). ``validate_config`` checks type and range of every field; a field fourierft does not
implement that changes the math (a newer PEFT's ``alpha``/``ifft2_norm``, or any unknown one) is refused with the PEFT
version and the supported range.
"""
from __future__ import annotations

import dataclasses
import math
import re

import peft

__all__ = ["check_adapter_name", "validate_config", "check_unimplemented_fields", "check_config_file_fields",
           "check_peft_version", "lowest_supported_peft", "n_frequency_for", "IMPLEMENTED_FIELDS", "SUPPORTED_PEFT"]


def check_adapter_name(name, where: str) -> None:
    """Raises ``ValueError`` unless ``name`` can name an adapter: a non-empty ``str`` without ``'.'`` (it becomes a
    key of the layers' ``nn.ParameterDict``; PEFT fails half-way through injecting such a name)."""
    if not isinstance(name, str) or not name or "." in name:
        raise ValueError(f"{where}: adapter name {name!r} is invalid: an adapter name must be a non-empty str "
                         "without '.' (it is a parameter-name segment)")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _str_or_strs(value) -> bool:
    return isinstance(value, str) or (isinstance(value, (list, tuple, set)) and all(isinstance(v, str) for v in value))


#: The FourierFTConfig fields fourierft implements (PEFT 0.21's FourierFT), besides PeftConfig's own.
IMPLEMENTED_FIELDS = frozenset({"n_frequency", "scaling", "random_loc_seed", "fan_in_fan_out", "target_modules",
                                "exclude_modules", "bias", "modules_to_save", "layers_to_transform", "layers_pattern",
                                "n_frequency_pattern", "init_weights"})
#: Fields a PEFT pull request adds to FourierFTConfig that change the math, with the value that leaves it as
#: fourierft computes it.
_MATH_FIELDS = {"alpha": None, "ifft2_norm": "backward"}
#: The PEFT versions whose FourierFT fourierft reproduces (pyproject.toml's range).
SUPPORTED_PEFT = ">=0.21,<0.22"
#: A field with no value that leaves the math unchanged.
_NO_NEUTRAL = object()


def lowest_supported_peft():
    """The lower bound of SUPPORTED_PEFT, as a ``packaging.version.Version``."""
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    return min(Version(spec.version) for spec in SpecifierSet(SUPPORTED_PEFT) if spec.operator == ">=")


def check_peft_version(version: str | None = None) -> None:
    """Called at ``import fourierft``: an older PEFT than SUPPORTED_PEFT is refused (its FourierFT layer has another
    signature and other loading rules: the results would be wrong, not an error); a newer one is used with a warning
    (fields it adds that change the math are refused when a config carries them)."""
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    version = Version(version or peft.__version__)
    if version in SpecifierSet(SUPPORTED_PEFT):
        return
    lowest = lowest_supported_peft()
    if version < lowest:
        raise ImportError(f"fourierft reproduces PEFT {SUPPORTED_PEFT}'s FourierFT; the installed PEFT is {version}, "
                          f"whose FourierFT differs (layer signature, checkpoint loading). Install "
                          f"'peft{SUPPORTED_PEFT}'.")
    import warnings

    warnings.warn(f"fourierft reproduces PEFT {SUPPORTED_PEFT}'s FourierFT and is untested with the installed PEFT "
                  f"{version}; a config field this PEFT adds that changes the math is refused.", stacklevel=3)


def _base_fields() -> set:
    return {f.name for f in dataclasses.fields(peft.PeftConfig)}


def _refuse_field(where: str, field: str, value, neutral, saved_elsewhere: bool = False) -> None:
    origin = ("is not a field of the installed PEFT's FourierFTConfig (the adapter was saved by another PEFT version)"
              if saved_elsewhere else "is a FourierFTConfig field fourierft does not implement")
    raise ValueError(f"{where}: {field}={value!r} {origin}, and it changes the FourierFT math (PEFT "
                     f"{peft.__version__}; fourierft reproduces PEFT {SUPPORTED_PEFT}"
                     + (f", where {field}={neutral!r}" if neutral is not _NO_NEUTRAL else "")
                     + "). Remove it or use a fourierft release that supports it.")


def check_unimplemented_fields(config, where: str) -> None:
    """Refuses a FourierFTConfig that carries a field fourierft does not implement (a newer PEFT's, such as
    ``alpha`` or ``ifft2_norm``) with a value that changes the math: anything but the value that leaves it as
    fourierft computes it (for a field unknown to fourierft: the field's default in PEFT's class)."""
    for field in dataclasses.fields(config):
        if field.name in IMPLEMENTED_FIELDS or field.name in _base_fields():
            continue
        value = getattr(config, field.name)
        if field.name in _MATH_FIELDS:
            neutral = _MATH_FIELDS[field.name]
        elif field.default is not dataclasses.MISSING:
            neutral = field.default
        elif field.default_factory is not dataclasses.MISSING:
            neutral = field.default_factory()
        else:
            neutral = _NO_NEUTRAL
        if neutral is _NO_NEUTRAL or value != neutral:
            _refuse_field(where, f"FourierFTConfig.{field.name}", value, neutral)


def check_config_file_fields(raw: dict, config_file: str) -> None:
    """Refuses an adapter_config.json with keys the installed PEFT's FourierFTConfig does not have (PEFT drops them
    silently when it loads the file): an adapter saved by a newer PEFT whose extra fields may change the math. Only
    ``alpha`` / ``ifft2_norm`` at the value that leaves the math unchanged are let through."""
    known = {f.name for f in dataclasses.fields(peft.FourierFTConfig)}
    for key, value in raw.items():
        if key in known:
            continue
        neutral = _MATH_FIELDS.get(key, _NO_NEUTRAL)
        if neutral is _NO_NEUTRAL or value != neutral:
            _refuse_field(config_file, key, value, neutral, saved_elsewhere=True)


def validate_config(config, where: str) -> None:
    """Checks every field of a ``FourierFTConfig`` (PEFT's class) for type and range before anything is built from
    it; raises ``ValueError`` naming ``where``, the field and the value. PEFT checks some of these late (a
    ``TypeError`` from inside ``update_layer``, a ``NotImplementedError`` for ``bias``) or not at all."""
    def bad(field, expected):
        raise ValueError(f"{where}: FourierFTConfig.{field}={getattr(config, field, None)!r} is invalid: expected "
                         f"{expected}")

    if not _is_int(config.n_frequency) or config.n_frequency <= 0:
        bad("n_frequency", "a positive int")
    scaling = config.scaling
    if isinstance(scaling, bool) or not isinstance(scaling, (int, float)) or not math.isfinite(scaling):
        bad("scaling", "a finite number")
    if not _is_int(config.random_loc_seed):
        bad("random_loc_seed", "an int (the seed of the entry draw)")
    for field in ("fan_in_fan_out", "init_weights", "inference_mode"):
        if not isinstance(getattr(config, field), bool):
            bad(field, "True or False")
    if not isinstance(config.bias, str) or not (config.bias in ("none", "all") or config.bias.endswith("_only")):
        # PEFT's rule (BaseTuner._mark_only_adapters_as_trainable): "<method>_only" opens the adapted layers' biases
        bad("bias", "'none', 'all' or '<method>_only' (e.g. 'fourier_only')")
    for field in ("target_modules", "exclude_modules", "layers_pattern"):
        value = getattr(config, field)
        if value is not None and not _str_or_strs(value):
            bad(field, "None, a str or a list of str")
    if config.modules_to_save is not None and (isinstance(config.modules_to_save, str)
                                               or not _str_or_strs(config.modules_to_save)):
        bad("modules_to_save", "None or a list of str")
    layers = config.layers_to_transform
    if layers is not None and not ((_is_int(layers) and layers >= 0) or (
            isinstance(layers, (list, tuple)) and all(_is_int(i) and i >= 0 for i in layers))):
        bad("layers_to_transform", "None, a non-negative int or a list of them")
    pattern = config.n_frequency_pattern
    if not isinstance(pattern, dict) or not all(isinstance(k, str) and _is_int(v) and v > 0
                                                for k, v in pattern.items()):
        bad("n_frequency_pattern", "a dict of module-name patterns to positive ints")
    check_unimplemented_fields(config, where)


def n_frequency_for(config, module_name: str) -> int:
    """The n_frequency PEFT's FourierFT tuner gives ``module_name`` (its ``_create_and_replace``): the first
    n_frequency_pattern key k with re.match(rf".*\.{k}$", name); else the pattern's entry under the full module name
    itself (so ``{"lin0": 5}`` applies to a top-level ``lin0``, which has no dot before it); else n_frequency."""
    pattern = config.n_frequency_pattern
    key = next((k for k in pattern if re.match(rf".*\.{k}$", module_name)), module_name)
    return pattern.get(key, config.n_frequency)
