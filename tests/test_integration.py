"""Integration with real frameworks (issue 14): Lightning, transformers' Trainer and accelerate drive
``gx.Optimizer`` as they drive ``torch.optim.AdamW``: the same parameters after a few steps, and a
run checkpointed and resumed equals the uninterrupted one. Tiny models on the CPU, no downloads.
Marked ``integration`` (left out of the default run; CI installs the ``integration`` extra and runs
``pytest -m integration``)."""

from __future__ import annotations

import pytest
import torch

import gradtx as gx

pytestmark = pytest.mark.integration
STEPS = 6


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))


def _data():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(STEPS * 4, 4, generator=gen)
    return x, x.sum(1, keepdim=True).sin()


def _gx_opt(params):
    return gx.Optimizer(params, gx.adamw(0.01, weight_decay=0.1))


def _torch_opt(params):
    return torch.optim.AdamW(params, lr=0.01, weight_decay=0.1)


def _close(a, b):
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)


def _params(model):
    return [p.detach().clone() for p in model.parameters()]


def test_accelerate_prepare_checkpoint_and_resume(tmp_path):
    accelerate = pytest.importorskip("accelerate")
    x, y = _data()

    def run(make_opt, steps, save=None, load=None):
        model = _model()
        acc = accelerate.Accelerator(cpu=True)
        opt = make_opt(model.parameters())
        model, opt = acc.prepare(model, opt)
        if load:
            acc.load_state(load)
        start = 3 if load else 0
        for i in range(start, steps):
            opt.zero_grad()
            acc.backward(((model(x[4 * i:4 * i + 4]) - y[4 * i:4 * i + 4]) ** 2).mean())
            opt.step()
            if save and i == 2:
                acc.save_state(save)
        return _params(model)

    full = run(_gx_opt, STEPS, save=str(tmp_path / "ck"))
    _close(full, run(_torch_opt, STEPS))
    _close(run(_gx_opt, STEPS, load=str(tmp_path / "ck")), full)


def test_lightning_trainer_with_a_scheduler_checkpoint_and_resume(tmp_path):
    pl = pytest.importorskip("lightning.pytorch")
    x, y = _data()
    # one batch per epoch: a resumed fit starts a fresh epoch, seeing what the uninterrupted one saw
    loader = lambda: torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x[:4], y[:4]), batch_size=4)  # noqa: E731

    class Module(pl.LightningModule):
        def __init__(self, make_opt):
            super().__init__()
            self.net, self.make_opt = _model(), make_opt

        def training_step(self, batch, _):
            bx, by = batch
            return ((self.net(bx) - by) ** 2).mean()

        def configure_optimizers(self):
            opt = self.make_opt(self.parameters())
            return {"optimizer": opt, "lr_scheduler": {"scheduler": torch.optim.lr_scheduler.StepLR(opt, 1, 0.8),
                                                       "interval": "step"}}

    def trainer(steps):
        return pl.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                          enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)

    def run(make_opt, steps=STEPS):
        module = Module(make_opt)
        trainer(steps).fit(module, loader())
        return module, _params(module.net)

    _, full = run(_gx_opt)
    _, ref = run(_torch_opt)
    _close(full, ref)
    half = Module(_gx_opt)
    t = trainer(3)
    t.fit(half, loader())
    t.save_checkpoint(tmp_path / "half.ckpt")
    resumed = Module(_gx_opt)
    trainer(STEPS).fit(resumed, loader(), ckpt_path=tmp_path / "half.ckpt")
    _close(_params(resumed.net), full)


def test_transformers_trainer_with_gx_optimizer_checkpoint_and_resume(tmp_path):
    transformers = pytest.importorskip("transformers")
    x, y = _data()

    class Data(torch.utils.data.Dataset):
        def __len__(self):
            return len(x)

        def __getitem__(self, i):
            return {"x": x[i], "labels": y[i]}

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = _model()

        def forward(self, x, labels):
            return {"loss": ((self.net(x) - labels) ** 2).mean()}

    def run(make_opt, out, resume=None, save_steps=3):
        model = Net()
        opt = make_opt(model.parameters())
        sched = torch.optim.lr_scheduler.StepLR(opt, 1, 0.8)
        args = transformers.TrainingArguments(output_dir=str(out), max_steps=STEPS, per_device_train_batch_size=4,
                                              use_cpu=True, report_to=[], save_steps=save_steps, logging_steps=100,
                                              dataloader_drop_last=True, disable_tqdm=True, seed=0)
        trainer = transformers.Trainer(model=model, args=args, train_dataset=Data(), optimizers=(opt, sched))
        trainer.train(resume_from_checkpoint=resume)
        return _params(model)

    full = run(_gx_opt, tmp_path / "gx")
    _close(full, run(_torch_opt, tmp_path / "torch"))
    _close(run(_gx_opt, tmp_path / "gx2", resume=str(tmp_path / "gx" / "checkpoint-3")), full)
