"""Writes Tests/FormatTests/Fixtures/mmengine_full.pth: a checkpoint laid out as mmengine's
Runner.save_checkpoint writes it ({'meta', 'state_dict', 'message_hub', 'optimizer',
'param_schedulers'}), with a real mmengine MessageHub state (HistoryBuffer objects, whose pickle
holds getattr(HistoryBuffer, 'min') style method references) around a tiny state dict.

Usage: /work/venv/bin/python scripts/make_mmengine_fixture.py   (needs torch and mmengine)
"""
import os, pickletools, io
import torch
from mmengine.logging import MessageHub

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "Tests", "FormatTests", "Fixtures", "mmengine_full.pth")
torch.manual_seed(0)
state = {"backbone.patch_embed.projection.weight": torch.randn(4, 3, 2, 2),
         "decode_head.conv_seg.bias": torch.randn(3)}
hub = MessageHub.get_instance("mae-eval-fixture")
for i in range(3):
    hub.update_scalar("train/loss", 1.0 / (i + 1))
hub.update_info("iter", 3)
param = torch.nn.Parameter(state["decode_head.conv_seg.bias"].clone())
opt = torch.optim.AdamW([param], lr=1e-4)
param.grad = torch.ones_like(param); opt.step()
checkpoint = {"meta": {"epoch": 1, "iter": 3, "mmengine_version": "0.10", "dataset_meta": {"classes": ["a", "b", "c"]}},
              "state_dict": state, "message_hub": hub.state_dict(), "optimizer": opt.state_dict(),
              "param_schedulers": [{"last_step": 3, "by_epoch": False}]}
torch.save(checkpoint, OUT)
print(OUT, os.path.getsize(OUT))
