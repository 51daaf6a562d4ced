"""transformers.Trainer with default TrainingArguments trains a fourierft model (a peft.PeftModel):
adapter-only checkpoints in PEFT's files, resume from one, eval_loss reported."""
import peft
import torch
import transformers

import fourierft


class Tiny(torch.utils.data.Dataset):
    def __init__(self, n=24):
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, 99, (n, 8), generator=g)
        self.labels = (self.ids[:, 0] % 3)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "attention_mask": torch.ones(8, dtype=torch.long), "labels": self.labels[i]}


def test_trainer_trains_saves_adapter_only_and_resumes(tmp_path):
    torch.manual_seed(0)
    base = transformers.BertForSequenceClassification(transformers.BertConfig(
        vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48, num_labels=3))
    model = fourierft.get_peft_model(base, fourierft.FourierFTConfig(task_type="SEQ_CLS", n_frequency=50, scaling=50.0))
    assert isinstance(model, peft.PeftModel)
    assert peft.get_peft_model_state_dict(model)  # PEFT sees the adapter (was {} with the old wrapper)
    before = model.base_model.model.bert.encoder.layer[0].attention.self.query.fourierft_spectrum["default"].clone()
    args = transformers.TrainingArguments(output_dir=str(tmp_path), max_steps=4, save_steps=2, eval_strategy="steps",
                                          eval_steps=2, per_device_train_batch_size=8, report_to=[], use_cpu=True)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=Tiny(), eval_dataset=Tiny(8))
    trainer.train()
    after = model.base_model.model.bert.encoder.layer[0].attention.self.query.fourierft_spectrum["default"]
    assert not torch.equal(before, after)
    checkpoint = tmp_path / "checkpoint-2"
    files = {p.name for p in checkpoint.iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json"} <= files
    assert not files & {"model.safetensors", "pytorch_model.bin"}
    assert (checkpoint / "adapter_model.safetensors").stat().st_size < 100_000
    metrics = trainer.evaluate()
    assert "eval_loss" in metrics and metrics["eval_loss"] > 0
    # resume: a fresh model continues from checkpoint-2 to step 4
    torch.manual_seed(0)
    base2 = transformers.BertForSequenceClassification(base.config)
    model2 = fourierft.get_peft_model(base2, fourierft.FourierFTConfig(task_type="SEQ_CLS", n_frequency=50, scaling=50.0))
    trainer2 = transformers.Trainer(model=model2, args=args, train_dataset=Tiny(), eval_dataset=Tiny(8))
    result = trainer2.train(resume_from_checkpoint=str(checkpoint))
    assert trainer2.state.global_step == 4 and result.training_loss > 0
    # The resumed run ends where the uninterrupted one ended: same spectra and head after step 4 (so the
    # checkpoint's adapter, head and optimizer state were really loaded: a fresh start from step 2 ends elsewhere).
    final = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    resumed = {n: p.detach() for n, p in model2.named_parameters() if p.requires_grad}
    assert final.keys() == resumed.keys() and any("fourierft_spectrum" in n for n in final)
    for name, value in final.items():
        torch.testing.assert_close(resumed[name], value, rtol=1e-5, atol=1e-6, msg=name)
    at_step_2 = fourierft.FourierFTModel.from_pretrained(transformers.BertForSequenceClassification(base.config),
                                                         checkpoint)
    spectrum_2 = at_step_2.base_model.model.bert.encoder.layer[0].attention.self.query.fourierft_spectrum["default"]
    assert not torch.allclose(spectrum_2, after)  # steps 3 and 4 moved it
    loaded = fourierft.FourierFTModel.from_pretrained(transformers.BertForSequenceClassification(base.config),
                                                      tmp_path / "checkpoint-4")
    layer = loaded.base_model.model.bert.encoder.layer[0].attention.self.query
    assert type(layer) is fourierft.FourierFTLinear
    torch.testing.assert_close(layer.fourierft_spectrum["default"],
                               model2.base_model.model.bert.encoder.layer[0].attention.self.query.fourierft_spectrum["default"])
