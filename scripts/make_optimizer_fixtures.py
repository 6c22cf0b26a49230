"""Reference optimiser steps for Tests/ModelTests/Fixtures/optimizers.json (torch, CPU, float32).

Three parameters (a 2-D weight, a 1-D bias, a 3-D token), fixed gradients per step, three steps of
torch.optim.AdamW, torch.optim.SGD(momentum) and MAE's LARS (util/lars.py, reproduced below), plus
torch.nn.utils.clip_grad_norm_. Run: python scripts/make_optimizer_fixtures.py
"""
import json, math, os
import torch

torch.manual_seed(0)
shapes = {"w": (4, 3), "b": (4,), "tok": (1, 1, 3)}
init = {k: torch.randn(s) for k, s in shapes.items()}
grads = [{k: torch.randn(s) for k, s in shapes.items()} for _ in range(3)]
lrs = [0.1, 0.05, 0.02]


class LARS(torch.optim.Optimizer):  # MAE util/lars.py
    def __init__(self, params, lr=0, weight_decay=0, momentum=0.9, trust_coefficient=0.001):
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum,
                                      trust_coefficient=trust_coefficient))

    @torch.no_grad()
    def step(self):
        for g in self.param_groups:
            for p in g['params']:
                dp = p.grad
                if dp is None:
                    continue
                if p.ndim > 1:
                    dp = dp.add(p, alpha=g['weight_decay'])
                    param_norm = torch.norm(p)
                    update_norm = torch.norm(dp)
                    one = torch.ones_like(param_norm)
                    q = torch.where(param_norm > 0., torch.where(update_norm > 0, (g['trust_coefficient'] * param_norm / update_norm), one), one)
                    dp = dp.mul(q)
                state = self.state[p]
                if 'mu' not in state:
                    state['mu'] = torch.zeros_like(p)
                mu = state['mu']
                mu.mul_(g['momentum']).add_(dp)
                p.add_(mu, alpha=-g['lr'])


def run(make):
    params = {k: torch.nn.Parameter(v.clone()) for k, v in init.items()}
    opt = make(params)
    for step, g in enumerate(grads):
        for k, p in params.items():
            p.grad = g[k].clone()
        for group in opt.param_groups:
            group["lr"] = lrs[step] * group.get("lr_scale", 1.0)
        opt.step()
    return {k: p.detach().flatten().tolist() for k, p in params.items()}


out = {"shapes": {k: list(s) for k, s in shapes.items()},
       "init": {k: v.flatten().tolist() for k, v in init.items()},
       "grads": [{k: v.flatten().tolist() for k, v in g.items()} for g in grads], "lrs": lrs}
# AdamW: decay on "w" only (1-D and tokens excluded as in fine-tuning's no_weight_decay list), lr scale 0.5 on "b".
out["adamw"] = run(lambda p: torch.optim.AdamW([
    {"params": [p["w"]], "weight_decay": 0.05},
    {"params": [p["b"]], "weight_decay": 0.0, "lr_scale": 0.5},
    {"params": [p["tok"]], "weight_decay": 0.0}], lr=0.1, betas=(0.9, 0.95)))
out["sgd"] = run(lambda p: torch.optim.SGD([
    {"params": [p["w"]], "weight_decay": 1e-3},
    {"params": [p["b"], p["tok"]], "weight_decay": 0.0}], lr=0.1, momentum=0.9))
out["lars"] = run(lambda p: LARS([p["w"], p["b"], p["tok"]], lr=0.1, weight_decay=0.0))
ps = {k: torch.nn.Parameter(v.clone()) for k, v in init.items()}
for k, p in ps.items():
    p.grad = grads[0][k].clone() * 10
norm = torch.nn.utils.clip_grad_norm_(list(ps.values()), 1.0)
out["clip"] = {"max_norm": 1.0, "scale": 10, "norm": float(norm),
               "grads": {k: p.grad.flatten().tolist() for k, p in ps.items()}}


def mae_lr(epoch, lr, min_lr, warmup, epochs):  # MAE util/lr_sched.adjust_learning_rate
    if epoch < warmup:
        return lr * epoch / warmup
    return min_lr + (lr - min_lr) * 0.5 * (1. + math.cos(math.pi * (epoch - warmup) / (epochs - warmup)))


out["schedule"] = {"lr": 1e-3, "min_lr": 1e-6, "warmup": 5, "epochs": 40,
                   "points": [[e, mae_lr(e, 1e-3, 1e-6, 5, 40)] for e in [0, 0.5, 2.5, 5, 5.25, 17, 39.9, 40]]}
path = os.path.join(os.path.dirname(__file__), "..", "Tests", "ModelTests", "Fixtures", "optimizers.json")
with open(path, "w") as f:
    json.dump(out, f, indent=1)
print("wrote", path)
