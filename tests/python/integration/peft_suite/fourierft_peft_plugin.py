"""pytest plugin that runs PEFT's own test suite (from the peft sdist) with fourierft's layers.

FOURIERFT_PEFT_SUITE_MODE selects how PEFT's FourierFT models get our kernels:
- ``peft``: plain PEFT (fourierft is not even imported), the baseline;
- ``registered``: ``import fourierft`` (registration on) and ``peft.get_peft_model`` is
  ``fourierft.get_peft_model``, so every PEFT entry point builds fourierft's layers;
- ``accelerate``: registration off; every model from ``peft.get_peft_model`` /
  ``PeftModel.from_pretrained`` is switched with ``fourierft.accelerate``.
At the end the plugin writes how many forwards ran through our layers and through PEFT's own
(FOURIERFT_PEFT_SUITE_COUNTS), so the calling test can prove which code the suite exercised.
"""
import json
import os

MODE = os.environ.get("FOURIERFT_PEFT_SUITE_MODE", "peft")
COUNTS = {"ours": 0, "peft": 0}


def _counting(cls, key):
    original = cls.forward

    def forward(self, *args, **kwargs):
        COUNTS[key] += 1
        return original(self, *args, **kwargs)

    cls.forward = forward


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
        peft.get_peft_model = fourierft.get_peft_model
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
