"""pytest plugin that runs PEFT's own test suite (from the peft sdist) with fourierft's layers.

FOURIERFT_PEFT_SUITE_MODE selects how PEFT's FourierFT models get our kernels:
- ``peft``: plain PEFT (fourierft is not even imported), the baseline;
- ``registered``: ``import fourierft`` (registration on), so every PEFT entry point builds fourierft's layers, and
  PEFT's entry points are fourierft's documented ones: ``peft.get_peft_model`` is ``fourierft.get_peft_model``,
  ``PeftModel.from_pretrained`` is ``fourierft.FourierFTModel.from_pretrained`` and ``PeftModel.load_adapter`` is
  ``fourierft.load_adapter`` (with their checks and rollback);
- ``accelerate``: registration off; every model from ``peft.get_peft_model`` /
  ``PeftModel.from_pretrained`` is switched with ``fourierft.accelerate``.
At the end the plugin writes how many forwards ran through our layers and through PEFT's own
(FOURIERFT_PEFT_SUITE_COUNTS), so the calling test can prove which code the suite exercised.
"""
import json
import os
import threading

MODE = os.environ.get("FOURIERFT_PEFT_SUITE_MODE", "peft")
COUNTS = {"ours": 0, "peft": 0, "from_pretrained": 0, "load_adapter": 0}


def _counting(cls, key):
    original = cls.forward

    def forward(self, *args, **kwargs):
        COUNTS[key] += 1
        return original(self, *args, **kwargs)

    cls.forward = forward


_INSIDE = threading.local()


def _through(ours, original):
    """A PEFT entry point that runs fourierft's ``ours``, which itself calls PEFT's entry point (this wrapper):
    inside ``ours`` the wrapper is PEFT's ``original``."""
    def call(*args, **kwargs):
        if getattr(_INSIDE, "active", False):
            return original(*args, **kwargs)
        _INSIDE.active = True
        COUNTS[ours.__name__] += 1
        try:
            return ours(*args, **kwargs)
        finally:
            _INSIDE.active = False

    return call


def _route_entry_points(peft, fourierft):
    peft.get_peft_model = fourierft.get_peft_model
    original_from_pretrained = peft.PeftModel.from_pretrained.__func__

    def from_pretrained(cls, *args, **kwargs):
        return fourierft.FourierFTModel.from_pretrained(*args, **kwargs)

    ours = _through(from_pretrained, original_from_pretrained)
    # the task classes (PeftModelForCausalLM, ...) are PEFT's own way in; PeftModel.from_pretrained is ours
    peft.PeftModel.from_pretrained = classmethod(
        lambda cls, *a, **k: (ours if cls is peft.PeftModel else original_from_pretrained)(cls, *a, **k))

    def load_adapter(self, *args, **kwargs):
        return fourierft.load_adapter(self, *args, **kwargs)

    peft.PeftModel.load_adapter = _through(load_adapter, peft.PeftModel.load_adapter)


def pytest_configure(config):
    import peft
    from peft.tuners.fourierft.layer import FourierFTLinear as PeftLayer

    _counting(PeftLayer, "peft")
    if MODE == "peft":
        return
    import fourierft
    from fourierft.layer import FourierFTKernels

    _counting(FourierFTKernels, "ours")
    if MODE == "registered":
        _route_entry_points(peft, fourierft)
        return
    assert MODE == "accelerate", MODE
    fourierft.register(False)

    def accelerated(model):
        try:
            fourierft.accelerate(model)
        except ValueError:  # no FourierFT layer (another method's test that matched -k)
            pass
        return model

    get_peft_model = peft.get_peft_model
    peft.get_peft_model = lambda *a, **k: accelerated(get_peft_model(*a, **k))
    from_pretrained = peft.PeftModel.from_pretrained.__func__
    peft.PeftModel.from_pretrained = classmethod(lambda cls, *a, **k: accelerated(from_pretrained(cls, *a, **k)))


def pytest_sessionfinish(session, exitstatus):
    path = os.environ.get("FOURIERFT_PEFT_SUITE_COUNTS")
    if path:
        with open(path, "w") as f:
            json.dump(COUNTS, f)
