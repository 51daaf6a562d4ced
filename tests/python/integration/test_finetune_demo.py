"""The fine-tuning demo (README's first command) in a shortened mode: every artefact it promises."""
import json
import subprocess
import sys

import peft
import pytest
import torch
import transformers

from fourierft.examples.data import LABELS, bbc_news, minilm_path


def test_bbc_news_split_is_stratified_and_fixed():
    train, held_out = bbc_news()
    assert len(train) + len(held_out) == 2127 and len(held_out) == 426  # 2,225 files, 98 duplicates dropped
    assert {label for _, label in held_out} == set(range(len(LABELS)))
    assert not {t for t, _ in train} & {t for t, _ in held_out}
    assert bbc_news()[1][:5] == held_out[:5]


def test_finetune_demo_short_run(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "fourierft.examples.finetune", "--max-train", "48", "--max-eval", "40",
           "--epochs", "2", "--batch-size", "8", "--max-length", "48", "--n-frequency", "300", "--out", str(out)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "fine-tuning" in result.stderr  # the tqdm bar
    summary = json.loads((out / "summary.json").read_text())
    assert summary["peft_reload_predictions_match"] and summary["merged_predictions_match"]
    assert len(summary["eval_accuracy_per_epoch"]) == 2 and len(summary["train_loss_per_epoch"]) == 2
    assert summary["adapter_params"] == 12 * 300 and summary["steps"] == 12
    assert summary["adapter_file_bytes"] == (out / "adapter" / "adapter_model.safetensors").stat().st_size
    assert (out / "training.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The head-only baseline ran with the same recipe and budget, and the run says what the adapter adds.
    assert len(summary["head_only_eval_accuracy_per_epoch"]) == 2
    # Accuracies are counts over the 40 held-out articles, and the closing line reports the summary's numbers.
    for accuracy in [summary["eval_accuracy_before"], *summary["eval_accuracy_per_epoch"],
                     *summary["head_only_eval_accuracy_per_epoch"]]:
        assert abs(accuracy * 40 - round(accuracy * 40)) < 1e-6, accuracy
    assert summary["head_only_eval_accuracy_after"] == summary["head_only_eval_accuracy_per_epoch"][-1]
    assert (f"held-out accuracy: head alone {summary['head_only_eval_accuracy_after']:.4f}, "
            f"FourierFT adapter + head {summary['eval_accuracy_after']:.4f}") in result.stdout
    # The adapter is PEFT's: peft reads it on its own, with the trained head.
    config = peft.PeftConfig.from_pretrained(str(out / "adapter"))
    assert config.peft_type == peft.PeftType.FOURIERFT and config.n_frequency == 300
    # The merged model is a plain transformers checkpoint.
    merged = transformers.AutoModelForSequenceClassification.from_pretrained(out / "merged")
    assert not any("fourierft" in n for n, _ in merged.named_parameters())
    base = transformers.AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=5)
    names = dict(merged.named_parameters())
    key = next(k for k in names if k.endswith("layer.0.attention.self.query.weight"))
    assert not torch.equal(names[key], dict(base.named_parameters())[key])


@pytest.mark.parametrize("quantize", ["4bit", "8bit"])
def test_finetune_demo_on_a_quantized_base(tmp_path, quantize):
    """--quantize: the base's linear layers are bitsandbytes' (CPU backend), the adapter is PEFT's and reloads onto a
    freshly quantized base with the same predictions, the merge re-quantizes, and the saved merged checkpoint is a
    quantized transformers checkpoint that reads back to the same logits."""
    pytest.importorskip("bitsandbytes")
    out = tmp_path / quantize
    cmd = [sys.executable, "-m", "fourierft.examples.finetune", "--max-train", "32", "--max-eval", "40",
           "--epochs", "1", "--batch-size", "8", "--max-length", "32", "--n-frequency", "300", "--out", str(out),
           "--quantize", quantize, "--no-baseline", "--quiet"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["quantize"] == quantize and summary["peft_reload_predictions_match"]
    assert summary["merged_checkpoint_max_logit_diff"] == 0.0
    assert summary["merged_prediction_agreement"] >= 0.5  # the re-quantized merge keeps the model (not its ties)
    config = json.loads((out / "merged" / "config.json").read_text())
    assert config["quantization_config"]["load_in_" + quantize] is True
    merged = transformers.AutoModelForSequenceClassification.from_pretrained(out / "merged")
    query = merged.bert.encoder.layer[0].attention.self.query
    assert type(query).__name__ == ("Linear4bit" if quantize == "4bit" else "Linear8bitLt")


def test_help_shows_every_default():
    result = subprocess.run([sys.executable, "-m", "fourierft.examples.finetune", "--help"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    for shown in ["(default: 1000)", "(default: 150.0)", "passes over the training articles (default: 3)",
                  "(default: query,value)", "(default: out/finetune)", "LoRA rank (--method lora) (default: 8)",
                  "articles per training step (default: 16)", "(default: 64)", "training articles (default: all)",
                  "(default: 0)", "(default: cuda when torch sees a GPU, else cpu)", "(default: 5e-2 for FourierFT"]:
        assert shown in text, shown
    assert "(default: None)" not in text and "(default: False)" not in text
